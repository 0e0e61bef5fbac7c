"""The Python API: one function per CLI stage, each taking a Config (or keyword overrides) and a run folder."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from d3hr.config import Config, load_config, nest
from d3hr.distillation.context import Context
from d3hr.distillation.pipeline import Run
from d3hr.utils.io import load_tensors, read_json
from d3hr.utils.schema import GENERATOR_POINTER, check, check_manifest


def _config(cfg: Config | None, overrides: dict[str, Any]) -> Config:
    """Copy ``cfg`` (or the defaults) and apply dotted keyword overrides such as ``select__ipc=1`` or 'select.ipc'."""
    items = [nest(k.replace("__", "."), v) for k, v in overrides.items()]
    return load_config(None, items, base=copy.deepcopy(cfg) if cfg is not None else None)


def _teacher(ctx: Context, arch: str) -> tuple[Any, dict[str, Any]]:
    """The evaluation teacher of the run's dataset (d3hr.evaluation.teacher), for methods that select with one: of
    ``select.teacher_epochs`` epochs, or the one evaluation takes by default."""
    from d3hr.data import load_dataset
    from d3hr.evaluation.teacher import get_teacher

    return get_teacher(ctx.cfg.data, load_dataset(ctx.cfg.data, "test"), arch, ctx.cfg.select.teacher_epochs,
                       device=ctx.device, cache=ctx.cache())


def _run(cfg: Config) -> Run:
    """A run whose methods get the evaluation teacher from here: distillation itself does not import evaluation."""
    return Run(cfg, teacher=_teacher)


def train_generator(cfg: Config | None = None, **overrides: Any) -> Path:
    """Train (or reuse from the cache) the small generator for the run's dataset; returns its directory."""
    run = _run(_config(cfg, overrides))
    with run.locked():
        return run.stage_generator()


def finetune(cfg: Config, out: str | Path, vae_epochs: int = 0) -> Path:
    """Fine-tune the pretrained generator ``cfg.generator.path`` on ``cfg.data``; returns OUT (diffusers layout)."""
    from d3hr.generator.finetune import finetune as _finetune

    return _finetune(cfg, out, vae_epochs)


def invert(cfg: Config | None = None, **overrides: Any) -> Path:
    """Encode, invert to level K and fit per-class statistics; returns RUN/stats.safetensors."""
    run = _run(_config(cfg, overrides))
    with run.locked():
        return run.stage_invert()


def select(cfg: Config | None = None, **overrides: Any) -> Path:
    """Choose the distilled set (group sampling, Base-RS or a baseline method); returns RUN/selection.safetensors."""
    run = _run(_config(cfg, overrides))
    with run.locked():
        return run.stage_select()


def generate(cfg: Config | None = None, **overrides: Any) -> Path:
    """Sample the selected latents back to images; returns RUN/images."""
    run = _run(_config(cfg, overrides))
    with run.locked():
        path = run.stage_generate()
        run.write_manifest()
        return path


def distill(cfg: Config | None = None, **overrides: Any) -> dict[str, Any]:
    """Run every stage (skipping unchanged ones) and write the manifest; returns a summary of what was written."""
    run = _run(_config(cfg, overrides))
    t0 = time.time()
    with run.locked():
        run.stage_generate()
        manifest = run.write_manifest()
    root = run.root
    out = {"run": str(root), "method": run.method, "images": str(root / "images"),
           "selection": str(root / "selection.safetensors"), "manifest": str(manifest),
           "config": str(root / "config.yaml"), "seconds": round(time.time() - t0, 1), "stages": run.state()}
    if (root / "stats.safetensors").is_file():
        out["stats"] = str(root / "stats.safetensors")
    if (root / "generator.json").is_file():
        out["generator"] = check(read_json(root / "generator.json"), GENERATOR_POINTER, root / "generator.json")["path"]
    return out


def pack(run: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Pack a run folder into the statistics, seeds and hashes that regenerate it: one safetensors file (default
    RUN.d3hr beside the run); returns its path, size and the size of the PNGs it stands for."""
    from d3hr.distillation.pack import pack_run

    return pack_run(run, out)


def unpack(pack: str | Path, out: str | Path, generator: str | None = None, force: bool = False,
           device: str = "cpu", root: str | None = None, check_choice: bool = False) -> dict[str, Any]:
    """Regenerate a packed set into the run folder ``out`` and check every image against its packed sha256.

    ``generator``: its directory or hub id (default: the path packed as a hint); another generator than the packed
    one is refused unless ``force``. ``root``: the dataset's folder, for packs of training images. ``check_choice``:
    first redo group sampling from the packed statistics. Returns the report; images that differ from the pack raise
    d3hr.distillation.unpack.ImagesDiffer (a D3HRError whose ``report`` lists them)."""
    from d3hr.distillation.unpack import unpack_set

    return unpack_set(pack, out, generator, force, device, root, check_choice)


def load_run(path: str | Path) -> dict[str, Any]:
    """Read a run folder: its config, manifest, statistics and selection (tensors as torch tensors)."""
    root = Path(path)
    manifest = check_manifest(read_json(root / "manifest.json"), root / "manifest.json")
    out: dict[str, Any] = {"config": load_config(root / "config.yaml"), "manifest": manifest}
    for name in ("stats", "selection"):
        f = root / f"{name}.safetensors"
        if f.is_file():
            out[name] = load_tensors(f)
    return out
