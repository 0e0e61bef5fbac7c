"""The orchestrator: the stages run forward, in one ordered loop, each skipped when unchanged.

    generator -> invert -> select -> generate          (d3hr.distillation.generator_stage, invert, select, generate)

Every stage module has ``NAME``, ``applies(ctx)`` (the method's spec says whether it needs a generator and the
inverted statistics), ``stage_key(ctx, previous)`` and ``run(ctx, previous) -> key``. A stage's key is the sha256
of its own configuration and of the key of the stage that ran before it (the data's identity for the first), so a
change anywhere redoes that stage and everything after it; a stage whose key matches RUN/stages.json and whose
outputs exist is skipped. Long stages write resumable partial state, and every artifact is written to a temporary
name and renamed. The methods are in d3hr.distillation.methods; the run folder's format in d3hr.runfolder.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from d3hr import __version__
from d3hr.config import Config
from d3hr.data.images import ImageSet
from d3hr.distillation import generate, generator_stage, invert, select
from d3hr.distillation.context import Context, KnownData, TeacherFn
from d3hr.generator import Generator
from d3hr.runfolder import (
    EVAL,
    IMAGES,
    POINTER,
    REPORT,
    RUN_LISTED,
    SELECTION,
    STATS,
    STATS_PARTIAL,
    class_folder_names,
    image_name,
)
from d3hr.utils.folders import writable_cache
from d3hr.utils.io import read_json
from d3hr.utils.progress import say
from d3hr.utils.schema import GENERATOR_POINTER, check

STAGES = (generator_stage, invert, select, generate)  # run in this order


class Run:
    """One run: its context and the stages run forward up to the one asked for (``known``: the data as a pack
    recorded it, for regeneration; see Context)."""

    def __init__(self, cfg: Config, teacher: TeacherFn | None = None, known: KnownData | None = None):
        self.ctx = Context(cfg, known)
        self.ctx.teacher = teacher  # for methods that select with the evaluation teacher (herding)
        self.keys: dict[str, str] = {}  # the key of every stage run so far in this process

    @property
    def cfg(self) -> Config:
        return self.ctx.cfg

    @property
    def root(self) -> Path:
        return self.ctx.root

    @property
    def method(self) -> str:
        return self.ctx.method

    @property
    def train_set(self) -> ImageSet:
        return self.ctx.train_set

    def state(self) -> dict[str, Any]:
        return self.ctx.folder.state()

    def run_until(self, last: str) -> str | None:
        """Run every stage that applies to the method, in order, up to and including ``last``; returns the key of
        the last stage that ran."""
        previous = None
        for stage in STAGES:
            if stage.NAME in self.keys:
                previous = self.keys[stage.NAME]
            elif stage.applies(self.ctx) or (stage is generator_stage and last == stage.NAME):
                previous = self.keys[stage.NAME] = stage.run(self.ctx, previous)
            if stage.NAME == last:
                break
        return previous

    def stage_generator(self) -> Path:
        """Use the given generator, or train (and cache) a small one on the dataset; returns its folder."""
        self.run_until(generator_stage.NAME)
        return self.ctx.generator_path

    def stage_invert(self) -> Path:
        self.run_until(invert.NAME)
        return self.root / STATS

    def stage_select(self) -> Path:
        self.run_until(select.NAME)
        return self.root / SELECTION

    def stage_generate(self) -> Path:
        self.run_until(generate.NAME)
        return self.root / IMAGES

    def generator(self) -> Generator:
        """The run's generator (the generator stage is run first if it has not)."""
        if self.ctx.generator_path is None:
            self.stage_generator()
        return self.ctx.generator()

    def class_labels(self, gen: Generator) -> torch.Tensor:
        return self.ctx.class_labels(gen)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run folder for the duration (rank 0 claims it, locks it, writes config.yaml and drops what an
        earlier use of the folder left for another method or data); the other ranks wait for it."""
        ctx = self.ctx
        if not ctx.world.is_main:
            ctx.world.barrier()
            try:
                yield
            finally:
                ctx.world.barrier()
            return
        if ctx.spec.needs_inversion or ctx.method == "herding" or (
                ctx.spec.needs_generator and ctx.cfg.generator.path is None):
            writable_cache(ctx.cache())  # generators, statistics and teachers are cached there
        with ctx.folder.lock(ctx.cfg.to_yaml()):
            self._drop_stale()
            ctx.world.barrier()
            try:
                yield
            finally:
                ctx.world.barrier()  # every rank has finished with the run folder

    def _drop_stale(self) -> None:
        """Remove what an earlier use of this run folder left and the current run would not replace: the statistics
        and generator pointer of a method this run does not use, and the evaluation results and report when the
        method or the data (its identity) changed. Only d3hr's own file names are touched."""
        ctx, stale, dropped = self.ctx, [], []
        for stage, names, needed in ((invert.NAME, [STATS, STATS_PARTIAL], ctx.spec.needs_inversion),
                                     (generator_stage.NAME, [POINTER], ctx.spec.needs_generator)):
            if not needed:
                stale += names
                dropped.append(stage)
        manifest = self.root / "manifest.json"
        before = read_json(manifest) if manifest.is_file() else {}
        before = before if isinstance(before, dict) else {}
        old_data = before.get("dataset") if isinstance(before.get("dataset"), dict) else {}
        now = ctx.data_identity()
        changed = [what for what, old, new in (("method", before.get("method"), ctx.method),
                                               ("data", old_data.get("sha256"), now["sha256"]),
                                               ("dataset", old_data.get("name"), now["name"]))
                   if old is not None and old != new]
        if changed:
            stale += [EVAL, REPORT]
        state = ctx.folder.state()
        gone = ctx.folder.remove(stale) + [f"stages.json:{s}" for s in dropped if s in state]
        ctx.folder.forget(dropped)
        if gone:
            why = f" ({' and '.join(changed)} changed)" if changed else ""
            say(f"[run] removed what an earlier run in {self.root} left for another method or data{why}: "
                f"{', '.join(gone)}")

    def write_manifest(self) -> Path:
        """manifest.json: format, dataset, classes, method, ipc, seeds, versions and the sha256 of every file d3hr
        wrote (RUN_LISTED and the PNGs generate saved): nothing else in the folder is listed as the run's."""
        import diffusers

        ctx = self.ctx
        if not ctx.world.is_main:
            return self.root / "manifest.json"
        classes = ctx.train_set.classes
        folders = class_folder_names(classes)
        select_rec = self.state().get(select.NAME, {})
        pointer = self.root / POINTER
        fields = {
            "dataset": ctx.data_identity(),
            "classes": {str(i): name for i, name in enumerate(classes)},
            "class_folders": folders,
            "method": ctx.method,
            "method_details": select_rec.get("details", {}),
            "ipc": ctx.cfg.select.ipc,
            "short_classes": select_rec.get("short_classes", {}),
            "seeds": {"seed": ctx.cfg.seed},
            "generator": (check(read_json(pointer), GENERATOR_POINTER, pointer)
                          if ctx.spec.needs_generator and pointer.is_file() else None),
            "versions": {"d3hr": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                         "python": platform.python_version()},
            "stages": self.state(),
        }
        return ctx.folder.write_manifest(list(RUN_LISTED), self._written_images(folders), fields)

    def _written_images(self, folders: list[str]) -> list[str]:
        """images/<class folder>/NNNNN.png as generate saved them: the selection's count per class (ipc by default)."""
        import json

        from safetensors import safe_open

        with safe_open(str(self.root / SELECTION), framework="pt") as f:
            counts = (f.get_tensor("count").tolist() if "count" in f.keys()
                      else [json.loads((f.metadata() or {})["d3hr"])["ipc"]] * len(folders))
        return [f"{IMAGES}/{folder}/{image_name(i)}" for folder, n in zip(folders, counts) for i in range(int(n))]
