"""Training checkpoints as safetensors: module weights, EMA weights, optimizer state and a step counter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from d3hr.utils.io import load_tensors, save_tensors


def save_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                    extra: dict[str, Any]) -> None:
    """Write every module's state, the optimizer's tensors (and its param groups as JSON) and ``extra``."""
    tensors: dict[str, torch.Tensor] = {}
    for name, mod in modules.items():
        for k, v in mod.state_dict().items():
            tensors[f"{name}.{k}"] = v
    state = optimizer.state_dict()
    for idx, st in state["state"].items():
        for k, v in st.items():
            tensors[f"optimizer.{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    save_tensors(path, tensors, {"param_groups": state["param_groups"], **extra})


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore what ``save_checkpoint`` wrote; returns its ``extra`` metadata."""
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
    return meta
