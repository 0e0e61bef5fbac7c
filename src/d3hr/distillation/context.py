"""What every stage of a run reads: the resolved config, the method, the training images, the run folder, the
device and process group, and the generator once the generator stage has provided it."""

from __future__ import annotations

import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from d3hr.config import Config, validate
from d3hr.data import fit_to_model, load_raw, resolve_config
from d3hr.data.identity import fingerprint
from d3hr.data.images import ImageSet
from d3hr.diffusion import DDIMGrid
from d3hr.distillation.methods import Method, get_method
from d3hr.errors import D3HRError
from d3hr.generator import Generator, load_generator
from d3hr.generator.model import SMALL_SCHEDULE, generator_shape
from d3hr.runfolder import STATS, RunFolder
from d3hr.utils.dist import check_device, get_world, rank_device
from d3hr.utils.folders import cache_dir
from d3hr.utils.io import load_tensors
from d3hr.utils.progress import say

# (context, architecture) -> (teacher module in eval mode, its metadata with 'path', 'sha256', 'epochs', 'test_top1')
TeacherFn = Callable[["Context", str], tuple[torch.nn.Module, dict[str, Any]]]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def short_classes(classes: list[str], counts: list[int], ipc: int, allow: bool) -> dict[str, int]:
    """Classes with fewer than ``ipc`` training images, {name: count}; a one-line error unless ``allow``."""
    short = {name: int(n) for name, n in zip(classes, counts) if n < ipc}
    if short and not allow:
        name, n = next(iter(short.items()))
        more = f" (and {len(short) - 1} more classes)" if len(short) > 1 else ""
        raise D3HRError(f"class '{name}' has {n} training images, fewer than ipc={ipc}{more}; "
                        "pass --allow-short-classes to distill it anyway")
    return short


@dataclass(frozen=True)
class KnownData:
    """A run's data as a pack recorded it (d3hr.distillation.pack), for regenerating a set from statistics without a
    training image: the class names, the generator's label of each, and the data identity the run keyed on."""

    classes: list[str]
    labels: list[int]
    identity: dict[str, Any]


class Context:
    """The inputs shared by the stages of one run. Construction validates every user value and resolves the data's
    shape (said once, written to config.yaml) before any work.

    With ``known`` (regeneration from a pack) no data is read: ``cfg`` holds the resolved shape already, the training
    set is an empty one with the known classes, and the identity and labels are the recorded ones."""

    def __init__(self, cfg: Config, known: KnownData | None = None):
        if cfg.diffusion.guidance_scale is None:
            cfg.diffusion.guidance_scale = 4.0 if cfg.generator.path is not None else 1.0
        validate(cfg)
        self.cfg = cfg
        self.spec: Method = get_method(cfg.select.method)
        if cfg.diffusion.inversion_steps == "auto" and self.spec.level == "K" and not self.spec.needs_inversion:
            raise D3HRError(f"diffusion.inversion_steps=auto is chosen by inversion, which method '{self.method}' "
                            "does not run: set a level")
        check_device(cfg.device)
        self.world = get_world(cfg.device)  # torchrun: K processes; otherwise a world of one
        self.device = torch.device(check_device(rank_device(cfg.device, self.world)))
        self.folder = RunFolder(cfg.out, main=self.world.is_main)
        self.known = known
        self.generator_path: Path | None = None  # set by the generator stage
        self.teacher: TeacherFn | None = None  # given by whoever runs the pipeline (d3hr.api)
        self._gen: Generator | None = None
        if cfg.generator.path is None and self.spec.needs_generator:
            self.check_num_steps(SMALL_SCHEDULE["num_train_timesteps"])  # the schedule of a generator trained here
        if known is not None:
            d = cfg.data  # (0, C, H, W): the classes and shape, no image
            empty = torch.empty(0, d.channels, d.resolution, d.resolution, dtype=torch.uint8)
            self.train_set: ImageSet = ImageSet(d.name, list(known.classes), np.empty(0, dtype=np.int64), d.channels,
                                                d.resolution, empty)
            return
        raw = load_raw(cfg.data, "train")
        side, channels = generator_shape(cfg.generator.path) if cfg.generator.path is not None else (None, None)
        self.data_note = resolve_config(cfg, raw.survey(), side, channels).note
        validate(cfg)
        if self.world.is_main:
            say(self.data_note)
        self.train_set = raw.reshaped(cfg.data.resolution, cfg.data.channels)
        self._fingerprint = fingerprint(raw, cfg.data.fingerprint)  # the files as found: content, not path

    @property
    def method(self) -> str:
        return self.spec.name

    @property
    def root(self) -> Path:
        return self.folder.root

    def cache(self) -> Path:
        """Where trained generators, statistics and teachers are cached (generator.cache_dir, $D3HR_CACHE or
        ~/.cache/d3hr)."""
        return cache_dir(self.cfg.generator.cache_dir)

    def data_identity(self) -> dict[str, Any]:
        """The dataset as every cache keys it: where it is, its shape, and a fingerprint of its content."""
        if self.known is not None:
            return dict(self.known.identity)
        d = self.cfg.data
        root = str(Path(d.root).resolve()) if d.root else None
        return {"name": d.name, "root": root, "limit": d.limit, "image_size": d.image_size, "fit": d.fit,
                "resolution": d.resolution, "channels": d.channels, "fingerprint": d.fingerprint,
                "sha256": self._fingerprint}

    def check_data(self, ipc: bool = True) -> None:
        """Refuse, before any training, classes the method cannot distill: fewer than 3 training images for
        statistics (inverting methods) and, with ``ipc``, fewer than ipc unless select.allow_short_classes."""
        ds, s = self.train_set, self.cfg.select
        counts = ds.class_counts().tolist()
        if self.spec.needs_inversion:
            for c, n in enumerate(counts):
                if n < 3:
                    raise D3HRError(f"class '{ds.classes[c]}' has {n} training images; statistics need at least 3")
        if ipc:
            short_classes(ds.classes, counts, s.ipc, s.allow_short_classes)

    def check_num_steps(self, total: int) -> None:
        if self.cfg.diffusion.num_steps > total:
            raise D3HRError(f"diffusion.num_steps={self.cfg.diffusion.num_steps} exceeds the generator's {total} "
                            "training timesteps")

    def generator(self) -> Generator:
        """The generator the generator stage provided, loaded once."""
        if self._gen is None:
            if self.generator_path is None:
                raise D3HRError("internal: the generator stage has not run")
            gen = load_generator(self.generator_path, self.device, self.cfg.diffusion.precision)
            self.check_num_steps(len(gen.alphas_cumprod))
            self._gen = gen
        return self._gen

    def class_labels(self, gen: Generator) -> torch.Tensor:
        """The generator's label index for each dataset class, (C,)."""
        classes = self.train_set.classes
        if self.known is not None:
            if max(self.known.labels, default=-1) >= gen.num_labels:
                raise D3HRError(f"the packed labels go up to {max(self.known.labels)} but the generator has "
                                f"{gen.num_labels} labels")
            return torch.as_tensor(self.known.labels, dtype=torch.long)
        if self.cfg.generator.class_map is None:
            if len(classes) > gen.num_labels:
                raise D3HRError(f"the generator has {gen.num_labels} labels but the dataset has {len(classes)} "
                                "classes; pass a class map")
            return torch.arange(len(classes))
        from d3hr.data.classmap import load_class_map

        return torch.as_tensor(load_class_map(self.cfg.generator.class_map, classes, gen.num_labels))

    def grid(self, gen: Generator) -> DDIMGrid:
        return DDIMGrid.create(gen.alphas_cumprod, self.cfg.diffusion.num_steps)

    def eps_fn(self, gen: Generator):
        scale = self.cfg.diffusion.guidance_scale
        return lambda zt, t, labels: gen.eps(zt, t, labels, scale)

    def encode(self, gen: Generator, idx: np.ndarray) -> torch.Tensor:
        """VAE posterior means z0 (n, c, h, w) of the training images at ``idx``, in batches of diffusion.batch_size."""
        bs, size = self.cfg.diffusion.batch_size, self.cfg.data.image_size
        return torch.cat([gen.encode(fit_to_model(self.train_set.load(idx[i : i + bs]), size, self.cfg.data.fit))
                          .cpu() for i in range(0, len(idx), bs)])

    def level(self) -> int:
        """The grid level K of the run: diffusion.inversion_steps, or under K=auto the level the invert stage chose
        (read from RUN/stats.safetensors)."""
        k = self.cfg.diffusion.inversion_steps
        if k != "auto":
            return int(k)
        stats = self.root / STATS
        if not stats.is_file():
            raise D3HRError("internal: the invert stage has not run")
        return int(load_tensors(stats)[1]["inversion_steps"])

    def unchanged(self, stage: str, key: str, output: str) -> bool:
        """Whether ``stage`` already finished with ``key`` and RUN/``output`` exists (decided on rank 0, told to
        every rank); says so when it did."""
        done = self.world.broadcast(self.folder.done(stage, key, [output]) if self.world.is_main else None)
        if done:
            say(f"[{stage}] unchanged, skipped ({self.root / output})")
        return bool(done)

    def record(self, stage: str, key: str, seconds: float, **extra: Any) -> None:
        """Record a finished stage in stages.json (rank 0)."""
        self.folder.record(stage, key, seconds, peak_rss_mb(), **extra)
