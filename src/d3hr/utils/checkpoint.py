"""Training checkpoints as safetensors: module weights, EMA weights, optimizer state, random generators' states and
a step counter."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from d3hr.utils.io import load_tensors, save_tensors


def checkpoint_seconds(default: float) -> float:
    """How often (seconds) a long loop writes its resumable state: the environment's D3HR_CHECKPOINT_SECONDS (0: at
    every step, as the kill-and-resume tests use), else the loop's ``default``."""
    return float(os.environ.get("D3HR_CHECKPOINT_SECONDS", default))


def save_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                    extra: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Write every module's state, the optimizer's tensors (and its param groups as JSON), the state of every
    random generator in ``generators`` (to resume inside an epoch) and ``extra``."""
    tensors: dict[str, torch.Tensor] = {}
    for name, mod in modules.items():
        for k, v in mod.state_dict().items():
            tensors[f"{name}.{k}"] = v
    state = optimizer.state_dict()
    for idx, st in state["state"].items():
        for k, v in st.items():
            tensors[f"optimizer.{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    for name, gen in (generators or {}).items():
        tensors[f"generators.{name}"] = gen.get_state()  # (n,) uint8
    save_tensors(path, tensors, {"param_groups": state["param_groups"], **extra})


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                    generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Restore what ``save_checkpoint`` wrote (the generators whose state it holds); returns its ``extra``
    metadata."""
    tensors, meta = load_tensors(path)
    for name, mod in modules.items():
        prefix = f"{name}."
        mod.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("optimizer."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = v
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta.pop("param_groups")})
    for name, gen in (generators or {}).items():
        if f"generators.{name}" in tensors:
            gen.set_state(tensors[f"generators.{name}"])
    return meta
