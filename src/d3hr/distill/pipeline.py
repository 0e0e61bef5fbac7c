"""The staged pipeline: generator -> invert (stats) -> select -> generate, each skipped when unchanged.

Every method (select.method) writes the same run folder. d3hr and base-rs run every stage; the baselines skip
inversion: random-real and herding select real training images (no generator), kmeans-latent selects decoded
k-means centroids of VAE latents (level 0, no sampling steps) and base-ddpm real latents noised forward to level K.

Each stage has a key: the sha256 of its configuration and of the keys of the stages it reads. A stage whose key
matches RUN/stages.json and whose outputs exist is skipped; one that changed is redone, and so is everything after
it. Long stages write resumable partial state, and every artifact is written to a temporary name and renamed.
"""

from __future__ import annotations

import fcntl
import os
import platform
import resource
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from d3hr import __version__
from d3hr.config import Config, validate
from d3hr.data import fit_to_model, fit_to_saved, load_dataset, load_raw, resolve_config, safe_class_dir
from d3hr.data.identity import fingerprint
from d3hr.data.images import ImageSet, match_channels
from d3hr.diffusion import DDIMGrid, ddim_invert, ddim_sample, forward_noise
from d3hr.distill.baselines import (
    KMEANS_INIT,
    herding_indices,
    kmeans_centroids,
    penultimate_features,
    random_subset,
)
from d3hr.distill.group import select_groups
from d3hr.distill.moments import Moments, normality_summary
from d3hr.errors import D3HRError
from d3hr.generator import Generator, build_small, load_generator, save_generator
from d3hr.generator.model import INFO_FILE, SMALL_SCHEDULE, generator_shape
from d3hr.generator.train import (
    encode_dataset,
    heldout_split,
    reconstruction_psnr,
    total_steps,
    train_dit,
    train_vae,
)
from d3hr.utils.dist import check_device, get_world, rank_device
from d3hr.utils.folders import RUN_LISTED, cache_dir, claim, writable_cache
from d3hr.utils.io import (
    atomic_path,
    load_tensors,
    read_json,
    replace_dir,
    save_tensors,
    sha256_file,
    sha256_json,
    write_json,
    write_text,
)
from d3hr.utils.progress import progress, say
from d3hr.utils.schema import GENERATOR_POINTER, check
from d3hr.utils.schema import STAGES as STAGES_SPEC
from d3hr.utils.seeding import derive_seed, generator_for

FORMAT_VERSION = 1
STAGES = ("generator", "invert", "select", "generate")
INVERT_METHODS = ("d3hr", "base-rs")  # methods that select from per-class statistics of inverted latents
GENERATOR_METHODS = (*INVERT_METHODS, "kmeans-latent", "base-ddpm")
HERDING_TEACHER = "convnet"
# Below this VAE reconstruction PSNR (8-bit, held-out training images) the run warns: see the README, "Your own
# images", for the measurements behind it.
PSNR_WARN_DB = 20.0  # the teacher (d3hr.evaluate.teacher) whose penultimate features herding uses


def _checkpoint_seconds() -> float:
    """How often inversion writes its partial moments (seconds); D3HR_CHECKPOINT_SECONDS overrides the 30 s default."""
    return float(os.environ.get("D3HR_CHECKPOINT_SECONDS", "30"))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cache_root(cfg: Config) -> Path:
    """Where trained generators, statistics and teachers are cached: generator.cache_dir, else $D3HR_CACHE, else
    ~/.cache/d3hr."""
    return cache_dir(cfg.generator.cache_dir)


class Run:
    """A run folder (DESIGN.md section 1) and the bookkeeping of its stages."""

    def __init__(self, cfg: Config):
        if cfg.diffusion.guidance_scale is None:
            cfg.diffusion.guidance_scale = 4.0 if cfg.generator.path is not None else 1.0
        validate(cfg)
        self.cfg = cfg
        self.root = Path(cfg.out)
        check_device(cfg.device)
        self.world = get_world(cfg.device)  # torchrun: K processes; otherwise a world of one
        self.device = torch.device(check_device(rank_device(cfg.device, self.world)))
        if cfg.generator.path is None and self.method in GENERATOR_METHODS:
            self._check_num_steps(SMALL_SCHEDULE["num_train_timesteps"])  # the schedule of a generator trained here
        # Shapes from the data and the generator: what is inferred is said once and written to config.yaml.
        raw = load_raw(cfg.data, "train")
        side, channels = generator_shape(cfg.generator.path) if cfg.generator.path is not None else (None, None)
        self.data_note = resolve_config(cfg, raw.survey(), side, channels).note
        validate(cfg)
        if self.world.is_main:
            say(self.data_note)
        self._train: ImageSet = raw.reshaped(cfg.data.resolution, cfg.data.channels)
        self._fingerprint = fingerprint(raw, cfg.data.fingerprint)  # the files as found: content, not path
        self._gen: Generator | None = None

    # ----- bookkeeping -------------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.root / "stages.json"

    def state(self) -> dict[str, Any]:
        return check(read_json(self.state_file), STAGES_SPEC, self.state_file) if self.state_file.is_file() else {}

    def _record(self, stage: str, key: str, seconds: float, **extra: Any) -> None:
        if not self.world.is_main:
            return
        state = self.state()
        state[stage] = {"key": key, "seconds": round(seconds, 2), "peak_rss_mb": round(_peak_rss_mb(), 1), **extra}
        write_json(self.state_file, state)

    def _done(self, stage: str, key: str, outputs: list[Path]) -> bool:
        rec = self.state().get(stage)
        return bool(rec and rec.get("key") == key and all(p.exists() for p in outputs))

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold RUN/.lock for the duration: a second process writing the same run refuses to start. Under torchrun
        rank 0 holds it (and writes config.yaml) for all ranks."""
        fd = self._lock() if self.world.is_main else None
        try:
            if fd is not None:
                self._drop_stale()
            self.world.barrier()  # rank 0 has the lock and has written config.yaml
            try:
                yield
            finally:
                self.world.barrier()  # every rank has finished with the run folder
        finally:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def _lock(self) -> int:
        if self.method in INVERT_METHODS or self.method == "herding" or (
                self.method in GENERATOR_METHODS and self.cfg.generator.path is None):
            writable_cache(cache_root(self.cfg))  # generators, statistics and teachers are cached there
        claim(self.root, "run")  # an empty or new folder, or a d3hr run: never a folder of the user's
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise D3HRError(f"run folder {self.root} is in use by another d3hr process") from None
        try:
            write_text(self.root / "config.yaml", self.cfg.to_yaml())
        except BaseException:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise
        return fd

    def _drop_stale(self) -> None:
        """Remove what an earlier use of this run folder left and the current run would not replace: the statistics
        and generator pointer of a method this run does not use, and the evaluation results and report when the
        method or the data (its identity) changed. Only d3hr's own file names are touched."""
        state, stale, dropped = self.state(), [], []
        for stage, names, needed in (("invert", ("stats.safetensors", "stats.partial.safetensors"), INVERT_METHODS),
                                     ("generator", ("generator.json",), GENERATOR_METHODS)):
            if self.method not in needed:
                stale += [n for n in names if (self.root / n).exists()]
                if state.pop(stage, None) is not None:
                    dropped.append(stage)
        manifest = self.root / "manifest.json"
        before = read_json(manifest) if manifest.is_file() else {}
        before = before if isinstance(before, dict) else {}
        old_data = before.get("dataset") if isinstance(before.get("dataset"), dict) else {}
        now = self.data_identity()
        changed = [what for what, old, new in (("method", before.get("method"), self.method),
                                               ("data", old_data.get("sha256"), now["sha256"]),
                                               ("dataset", old_data.get("name"), now["name"]))
                   if old is not None and old != new]
        if changed:
            stale += [n for n in ("eval", "report.html") if (self.root / n).exists()]
        if not stale and not dropped:
            return
        for name in stale:
            path = self.root / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if dropped:
            write_json(self.state_file, state)
        why = f" ({' and '.join(changed)} changed)" if changed else ""
        say(f"[run] removed what an earlier run in {self.root} left for another method or data{why}: "
            f"{', '.join(stale + [f'stages.json:{s}' for s in dropped])}")

    # ----- shared inputs -----------------------------------------------------------------------------------
    @property
    def method(self) -> str:
        """The method run: select.method, with d3hr under select.strategy=random being base-rs."""
        s = self.cfg.select
        return "base-rs" if s.method == "d3hr" and s.strategy == "random" else s.method

    @property
    def train_set(self) -> ImageSet:
        return self._train

    def check_data(self, ipc: bool = True) -> None:
        """Refuse, before any training, classes the method cannot distill: fewer than 3 training images for
        statistics (inverting methods) and, with ``ipc``, fewer than ipc unless select.allow_short_classes."""
        ds, s = self.train_set, self.cfg.select
        counts = ds.class_counts().tolist()
        if self.method in INVERT_METHODS:
            for c, n in enumerate(counts):
                if n < 3:
                    raise D3HRError(f"class '{ds.classes[c]}' has {n} training images; statistics need at least 3")
        if ipc:
            _short_classes(ds.classes, counts, s.ipc, s.allow_short_classes)

    def _check_num_steps(self, total: int) -> None:
        if self.cfg.diffusion.num_steps > total:
            raise D3HRError(f"diffusion.num_steps={self.cfg.diffusion.num_steps} exceeds the generator's {total} "
                            "training timesteps")

    def data_identity(self) -> dict[str, Any]:
        d = self.cfg.data
        root = str(Path(d.root).resolve()) if d.root else None
        return {"name": d.name, "root": root, "limit": d.limit, "image_size": d.image_size, "fit": d.fit,
                "resolution": d.resolution, "channels": d.channels, "fingerprint": d.fingerprint,
                "sha256": self._fingerprint}

    def generator_key(self) -> str:
        g = self.cfg.generator
        if g.path is not None:
            return sha256_json({"pretrained": str(Path(g.path).resolve()) if Path(g.path).exists() else g.path,
                                "class_map": g.class_map})
        return sha256_json({"data": self.data_identity(), "vae": asdict(g.vae), "dit": asdict(g.dit),
                            "precision": g.precision, "seed": g.seed})

    def generator_dir(self) -> Path:
        if self.cfg.generator.path is not None:
            return Path(self.cfg.generator.path)
        return cache_root(self.cfg) / "generators" / self.generator_key()[:16]

    def generator(self) -> Generator:
        if self._gen is None:
            self.stage_generator()
            gen = load_generator(self.generator_dir(), self.device, self.cfg.diffusion.precision)
            self._check_num_steps(len(gen.alphas_cumprod))
            self._gen = gen
        return self._gen

    def class_labels(self, gen: Generator) -> torch.Tensor:
        """The generator's label index for each dataset class, (C,)."""
        classes = self.train_set.classes
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

    # ----- stages ------------------------------------------------------------------------------------------
    def stage_generator(self) -> Path:
        """Use the given generator, or train (and cache) a small one on the dataset; resumable by epoch."""
        key, path = self.generator_key(), self.generator_dir()
        pointer = {"path": str(path.resolve()) if path.exists() else str(path), "key": key,
                   "pretrained": self.cfg.generator.path is not None}
        ready = self.world.broadcast(self.cfg.generator.path is not None
                                     or (path / "transformer" / "config.json").is_file())
        if ready:
            say(f"[generator] using {path}")
            if self.world.is_main and not self._done("generator", key, []):
                write_json(self.root / "generator.json", pointer)
                self._record("generator", key, 0.0, path=str(path), quality=self._generator_quality(path))
            return path
        t0 = time.time()
        self._train_generator(path)  # under torchrun: data parallel over the ranks, rank 0 writes
        if self.world.is_main:
            pointer["path"] = str(path.resolve())
            write_json(self.root / "generator.json", pointer)
            self._record("generator", key, time.time() - t0, path=str(path), processes=self.world.size,
                         quality=self._generator_quality(path))
        self.world.barrier()
        return path

    def _train_generator(self, path: Path) -> None:
        cfg, ds = self.cfg, self.train_set
        g = cfg.generator
        partial = path.with_name(path.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(g.seed)
        gen = build_small(len(ds.classes), ds.channels, cfg.data.image_size, g.vae.block_out_channels,
                          g.vae.latent_channels, g.vae.layers_per_block, g.dit.num_layers,
                          g.dit.num_attention_heads, g.dit.attention_head_dim, g.dit.patch_size).to(self.device)
        say(f"[generator] training a small VAE + DiT on {len(ds)} {ds.name} images -> {path}")
        fit_idx, heldout = heldout_split(len(ds), g.seed)
        vae_losses, t_vae = train_vae(gen, ds, g.vae, cfg.data.image_size, cfg.data.fit, g.seed, g.precision,
                                      partial / "vae.ckpt.safetensors", train_idx=fit_idx)
        psnr = reconstruction_psnr(gen, ds, heldout, cfg.data.image_size, cfg.data.fit) if len(heldout) else None
        z = encode_dataset(gen, ds, cfg.data.image_size, cfg.data.fit)  # (N, c, h, w) unscaled
        scale = 1.0 / float(z.float().std())
        gen.vae.register_to_config(scaling_factor=scale)
        labels = torch.as_tensor(ds.targets)
        dit_losses, t_dit = train_dit(gen, z * scale, labels, g.dit, g.seed, g.precision,
                                      partial / "dit.ckpt.safetensors")
        quality = {"vae_psnr_db": None if psnr is None else round(psnr, 2), "vae_heldout_images": len(heldout),
                   "vae_steps": total_steps(g.vae.steps, g.vae.epochs, len(fit_idx), g.vae.batch_size),
                   "dit_steps": total_steps(g.dit.steps, g.dit.epochs, len(ds), g.dit.batch_size),
                   "vae_final_mse": vae_losses[-1] if vae_losses else None,
                   "dit_final_loss": dit_losses[-1] if dit_losses else None}
        gen.info = {"trained_by": f"d3hr {__version__}", "dataset": self.data_identity(), "classes": ds.classes,
                    "vae": asdict(g.vae), "dit": asdict(g.dit), "seed": g.seed, "scaling_factor": scale,
                    "vae_mse_per_epoch": vae_losses, "dit_loss_per_epoch": dit_losses, "quality": quality,
                    "seconds": {"vae": round(t_vae, 1), "dit": round(t_dit, 1)}}
        if self.world.is_main:
            out = path.with_name(path.name + ".out")
            shutil.rmtree(out, ignore_errors=True)
            save_generator(gen, out)
            replace_dir(out, path)
            shutil.rmtree(partial, ignore_errors=True)
        say(f"[generator] VAE {t_vae:.0f}s, {quality['vae_steps']} steps (final training MSE "
            f"{quality['vae_final_mse'] or float('nan'):.4f}), DiT {t_dit:.0f}s, {quality['dit_steps']} steps "
            f"(final loss {quality['dit_final_loss'] or float('nan'):.4f})")

    def _generator_quality(self, path: Path) -> dict[str, Any]:
        """The quality readout of a generator trained here (from its provenance file), said with a warning that
        names the key to raise when the VAE's reconstruction is poor; {} for a pretrained generator."""
        info_file = path / INFO_FILE
        quality = read_json(info_file).get("quality", {}) if info_file.is_file() else {}
        psnr = quality.get("vae_psnr_db")
        if psnr is None:
            return quality
        say(f"[generator] VAE reconstruction PSNR {psnr:.1f} dB on {quality['vae_heldout_images']} held-out "
            f"training images; DiT final loss {quality.get('dit_final_loss') or float('nan'):.4f}")
        if psnr < PSNR_WARN_DB:
            budget = "steps" if self.cfg.generator.vae.steps is not None else "epochs"
            now = getattr(self.cfg.generator.vae, budget)
            say(f"[generator] warning: a reconstruction under {PSNR_WARN_DB:.0f} dB blurs every distilled image; "
                f"raise generator.vae.{budget} (now {now}) or generator.vae.block_out_channels")
        return quality

    def invert_key(self) -> str:
        d = self.cfg.diffusion
        return sha256_json({"generator": self.generator_key(), "data": self.data_identity(),
                            "num_steps": d.num_steps, "inversion_steps": d.inversion_steps,
                            "guidance_scale": d.guidance_scale, "encode": d.encode, "precision": d.precision,
                            "batch_size": d.batch_size, "seed": self.cfg.seed if d.encode == "sample" else None})

    def stage_invert(self) -> Path:
        """Encode every training image, invert to level K, and stream per-class moments (before and after).

        Under torchrun, rank r inverts batches r, r + K, r + 2K, ...; rank 0 merges every batch's moments in batch
        order, exactly as one process does, so the statistics are the same bytes.
        """
        self.check_data(ipc=False)
        out = self.root / "stats.safetensors"
        key = self.invert_key()
        cached = cache_root(self.cfg) / "stats" / f"{key[:16]}.safetensors"
        action = None
        if self.world.is_main:
            if self._done("invert", key, [out]):
                action = "skip"
            elif cached.is_file() and load_tensors(cached)[1].get("key") == key:
                action = "cache"
        action = self.world.broadcast(action)
        if action == "skip":
            say(f"[invert] unchanged, skipped ({out})")
            if self.world.is_main:
                rec = self.state()["invert"]
                say(_normality_table(rec["normality_z0"], rec["normality_zk"], self.cfg.diffusion.inversion_steps))
            return out
        if action == "cache":
            if self.world.is_main:
                with atomic_path(out, ".safetensors") as tmp:
                    shutil.copyfile(cached, tmp)
                _, meta = load_tensors(out)
                self._record("invert", key, 0.0, from_cache=str(cached), normality_z0=meta["normality_z0"],
                             normality_zk=meta["normality_zk"])
                say(f"[invert] same generator, data and diffusion settings as an earlier run: copied {cached}")
                say(_normality_table(meta["normality_z0"], meta["normality_zk"],
                                     self.cfg.diffusion.inversion_steps))
            self.world.barrier()
            return out
        gen = self.generator()
        t0 = time.time()
        ds, d = self.train_set, self.cfg.diffusion
        labels_map = self.class_labels(gen)
        grid, eps_fn = self.grid(gen), self.eps_fn(gen)
        num_classes, dim = len(ds.classes), int(np.prod(gen.latent_shape))
        partial = self.root / "stats.partial.safetensors"
        m0, mk, start = Moments.zeros(num_classes, dim), Moments.zeros(num_classes, dim), 0
        if self.world.is_main and partial.is_file():
            tensors, meta = load_tensors(partial)
            if meta.get("key") == key:
                m0, mk = Moments.from_tensors(tensors, "z0"), Moments.from_tensors(tensors, "zk")
                start = int(meta["next_batch"])
                say(f"[invert] resuming at batch {start}")
        start = self.world.broadcast(start)
        batches = [np.arange(i, min(i + d.batch_size, len(ds))) for i in range(0, len(ds), d.batch_size)]
        bar = progress(len(ds), f"invert (K={d.inversion_steps}/{d.num_steps})", "img")
        bar.update(int(sum(len(b) for b in batches[:start])))
        last_save = time.time()
        for first in range(start, len(batches), self.world.size):  # one round: batch first + r on rank r
            b = first + self.world.rank
            mine = self._invert_batch(gen, b, batches[b], labels_map, grid, eps_fn) if b < len(batches) else None
            done = [x for x in self.world.all_gather(mine) if x is not None]  # in batch order
            for item in done:
                if isinstance(item, str):
                    raise D3HRError(item)
            if self.world.is_main:
                for z0_part, zk_part in done:
                    m0 = m0.merge(Moments.expand(z0_part, num_classes))
                    mk = mk.merge(Moments.expand(zk_part, num_classes))
            nxt = first + len(done)
            bar.update(int(sum(len(batches[i]) for i in range(first, nxt))))
            if self.world.is_main and time.time() - last_save >= _checkpoint_seconds() and nxt < len(batches):
                save_tensors(partial, {**m0.tensors("z0"), **mk.tensors("zk")}, {"key": key, "next_batch": nxt})
                last_save = time.time()
        bar.close()
        if self.world.is_main:
            before, after = normality_summary(m0), normality_summary(mk)
            tensors = {"mean": mk.mean.float(), "std": mk.std().float(), "skewness": mk.skewness().float(),
                       "excess_kurtosis": mk.excess_kurtosis().float(), "count": mk.n.to(torch.int64),
                       "z0.mean": m0.mean.float(), "z0.std": m0.std().float(), "z0.skewness": m0.skewness().float(),
                       "z0.excess_kurtosis": m0.excess_kurtosis().float()}
            meta = {"key": key, "classes": ds.classes, "latent_shape": list(gen.latent_shape),
                    "inversion_steps": d.inversion_steps, "num_steps": d.num_steps,
                    "guidance_scale": d.guidance_scale, "normality_z0": before, "normality_zk": after}
            save_tensors(out, tensors, meta)
            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cached, ".safetensors") as tmp:
                shutil.copyfile(out, tmp)
            partial.unlink(missing_ok=True)
            self._record("invert", key, time.time() - t0, images=len(ds), processes=self.world.size,
                         normality_z0=before, normality_zk=after)
            say(_normality_table(before, after, d.inversion_steps))
        self.world.barrier()
        return out

    def _invert_batch(self, gen: Generator, b: int, idx: np.ndarray, labels_map: torch.Tensor, grid: DDIMGrid,
                      eps_fn: Any) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]] | str:
        """Encode and invert inversion batch ``b`` (training images ``idx``); its per-class moments of z0 and zk in
        compact form, or a one-line error."""
        d, num_classes = self.cfg.diffusion, len(self.train_set.classes)
        y = torch.as_tensor(self.train_set.targets[idx])
        x = fit_to_model(self.train_set.load(idx), self.cfg.data.image_size, self.cfg.data.fit)
        noise = generator_for(self.cfg.seed, "encode", b) if d.encode == "sample" else None
        z0 = gen.encode(x, sample=d.encode == "sample", generator=noise)  # (B, c, h, w)
        zk = ddim_invert(eps_fn, z0, labels_map[y], grid, d.inversion_steps)
        if not (torch.isfinite(z0).all() and torch.isfinite(zk).all()):
            return f"non-finite latents in inversion batch {b} (images {idx[0]}..{idx[-1]})"
        return (Moments.from_batch(z0.flatten(1), y, num_classes).compact(),
                Moments.from_batch(zk.flatten(1), y, num_classes).compact())

    def select_key(self) -> str:
        s, d, method = self.cfg.select, self.cfg.diffusion, self.method
        if method in INVERT_METHODS:  # the key of the select config as it was before methods (old runs still skip)
            sel = {k: v for k, v in asdict(s).items() if k != "method"}
            sel["strategy"] = "random" if method == "base-rs" else "group"
            return sha256_json({"invert": self.invert_key(), "select": sel, "seed": self.cfg.seed})
        key: dict[str, Any] = {"method": method, "data": self.data_identity(), "ipc": s.ipc,
                               "allow_short_classes": s.allow_short_classes}
        if method == "herding":
            key["features"] = f"teacher {HERDING_TEACHER} penultimate"
        else:
            key["seed"] = self.cfg.seed
        if method in GENERATOR_METHODS:
            key["generator"] = self.generator_key()
        if method == "kmeans-latent":
            key["n_init"] = KMEANS_INIT
        if method == "base-ddpm":
            key.update(num_steps=d.num_steps, inversion_steps=d.inversion_steps, guidance_scale=d.guidance_scale)
        return sha256_json(key)

    def stage_select(self) -> Path:
        """Choose IPC latents (or real images) per class: group sampling, Base-RS or a baseline."""
        self.check_data()
        if self.method in INVERT_METHODS:
            self.stage_invert()
        out = self.root / "selection.safetensors"
        key = self.select_key()
        if self.world.broadcast(self._done("select", key, [out]) if self.world.is_main else None):
            say(f"[select] unchanged, skipped ({out})")
            return out
        if self.method in INVERT_METHODS:
            self._select_groups(out, key)
        else:
            # Every rank takes part in getting the herding teacher (under torchrun it trains with DDP).
            teacher = self._herding_teacher() if self.method == "herding" else None
            if self.world.is_main:  # baselines are not sharded: rank 0 selects, the others wait
                self._select_baseline(out, key, teacher)
        self.world.barrier()
        return out

    def _select_groups(self, out: Path, key: str) -> None:
        """Group sampling (or Base-RS) of IPC latents per class in the inverted domain."""
        t0 = time.time()
        s = self.cfg.select
        strategy = "random" if self.method == "base-rs" else "group"
        tensors, meta = load_tensors(self.root / "stats.safetensors")
        mean, std, skew = tensors["mean"], tensors["std"], tensors["skewness"]
        short = _short_classes(meta["classes"], tensors["count"].tolist(), s.ipc, s.allow_short_classes)
        for name, t in (("mean", mean), ("std", std), ("skewness", skew)):
            if not torch.isfinite(t).all():
                c = int((~torch.isfinite(t)).any(dim=1).nonzero()[0])
                raise D3HRError(f"stats.safetensors: non-finite {name} for class '{meta['classes'][c]}'")
        bar = progress(len(mean), f"select ({strategy}, m={s.candidates if strategy == 'group' else 1})", "class")
        num_pools = len(mean) if s.pools is None else min(s.pools, len(mean))
        mine = self.world.shard(range(num_pools))  # whole pools per process: the same arithmetic as one process
        part = select_groups(mean, std, skew, s.ipc, s.candidates, tuple(s.weights), self.cfg.seed, s.pools,
                             s.chunk, strategy, progress=bar.update, pool_ids=mine)
        bar.close()
        cls = [c for c in range(len(mean)) if c % num_pools in mine]
        parts = self.world.all_gather((cls, part.x[cls], part.index[cls], part.loss[cls], part.loss_first[cls]))
        if not self.world.is_main:
            return
        sel = part
        for c_idx, x, index, loss, loss_first in parts:
            sel.x[c_idx], sel.index[c_idx], sel.loss[c_idx], sel.loss_first[c_idx] = x, index, loss, loss_first
        shape = meta["latent_shape"]
        tensors = {"latents": sel.x.reshape(len(mean), s.ipc, *shape), "index": sel.index, "pool": sel.pool,
                   "loss": sel.loss, "loss_first": sel.loss_first}
        save_tensors(out, tensors, {"key": key, "classes": meta["classes"], "strategy": strategy, "ipc": s.ipc,
                                    "short_classes": short,
                                    "seed": self.cfg.seed, "candidates": s.candidates, "weights": s.weights,
                                    "pools": s.pools, "draws": "z = randn(64, ipc, D) per block, generator seeded "
                                    "by sha256('seed:pool:p:block:b')"})
        gain = float((1 - sel.loss / sel.loss_first.clamp_min(1e-12)).mean())
        self._record("select", key, time.time() - t0, mean_loss=float(sel.loss.mean()),
                     mean_loss_gain_over_first=gain, short_classes=short)
        say(f"[select] {strategy}: mean loss {float(sel.loss.mean()):.4f} "
            f"({100 * gain:.1f}% under a single random group)")

    def _select_baseline(self, out: Path, key: str,
                         teacher_pair: tuple[torch.nn.Module, dict[str, Any]] | None = None) -> None:
        """Real image indices (random-real, herding) and/or latents (kmeans-latent: level 0, base-ddpm: level K)."""
        t0 = time.time()
        method, s, ds, seed = self.method, self.cfg.select, self.train_set, self.cfg.seed
        short = _short_classes(ds.classes, ds.class_counts().tolist(), s.ipc, s.allow_short_classes)
        random_draw = "uniform without replacement: torch.randperm seeded by sha256('seed:random-real:c')"
        if method == "herding":
            teacher, info = teacher_pair or self._herding_teacher()
            details = {"features": f"penultimate layer of the {HERDING_TEACHER} teacher (d3hr.evaluate.teacher)",
                       "teacher": info["path"], "teacher_epochs": info["epochs"],
                       "teacher_test_top1": info["test_top1"]}
        elif method == "random-real":
            details = {"images": random_draw}
        else:
            gen = self.generator()
            details = {"latents": "VAE posterior mean z0"}
            if method == "kmeans-latent":
                details.update(level=0, n_init=KMEANS_INIT, random_state="sha256('seed:kmeans:c') mod 2^32")
            else:
                level = self.cfg.diffusion.inversion_steps
                alpha = float(self.grid(gen).alphas[level])
                details.update(images=random_draw, level=level, alpha=alpha,
                               eps="randn seeded by sha256('seed:base-ddpm:c')")
        index_rows: list[torch.Tensor] = []  # per class (n_c,) training-image indices, n_c = min(ipc, class size)
        latent_rows: list[torch.Tensor] = []  # per class (n_c, c, h, w)
        bar = progress(len(ds.classes), f"select ({method})", "class")
        for c in range(len(ds.classes)):
            idx = torch.as_tensor(np.flatnonzero(ds.targets == c))  # (N_c,) the class's training images
            if method == "kmeans-latent":
                z0 = self._encode(gen, idx.numpy())  # (N_c, c, h, w)
                k = min(s.ipc, len(idx))
                centroids = kmeans_centroids(z0.flatten(1), k, derive_seed(seed, "kmeans", c))  # (k, D)
                latent_rows.append(centroids.reshape(k, *z0.shape[1:]))
            elif method == "herding":
                index_rows.append(idx[herding_indices(penultimate_features(teacher, ds.load(idx.numpy())), s.ipc)])
            else:
                index_rows.append(idx[random_subset(len(idx), s.ipc, seed, c)])
            if method == "base-ddpm":
                z0 = self._encode(gen, index_rows[-1].numpy())  # (n_c, c, h, w)
                eps = torch.randn(z0.shape, generator=generator_for(seed, "base-ddpm", c))
                latent_rows.append(forward_noise(z0, alpha, eps))  # level K
            bar.update(1)
        bar.close()
        tensors = {"count": torch.as_tensor([len(r) for r in latent_rows or index_rows])}  # (C,) images per class
        if latent_rows:
            tensors["latents"] = _pad(latent_rows, s.ipc, 0.0)  # (C, ipc, c, h, w)
        if index_rows:
            tensors["image_index"] = _pad(index_rows, s.ipc, -1)  # (C, ipc)
        save_tensors(out, tensors, {"key": key, "classes": ds.classes, "method": method, "ipc": s.ipc,
                                    "short_classes": short, "seed": seed, "details": details})
        self._record("select", key, time.time() - t0, short_classes=short, details=details)
        say(f"[select] {method}: {int(tensors['count'].sum())} {'latents' if latent_rows else 'images'}")

    def _herding_teacher(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The evaluation teacher (from the cache, trained on the full training split if missing)."""
        from d3hr.evaluate.teacher import get_teacher

        return get_teacher(self.root, self.cfg.data, load_dataset(self.cfg.data, "test"), HERDING_TEACHER,
                           device=self.device, cache=cache_root(self.cfg))

    def _encode(self, gen: Generator, idx: np.ndarray) -> torch.Tensor:
        """VAE posterior means z0 (n, c, h, w) of the training images at ``idx``, in batches of diffusion.batch_size."""
        bs, size = self.cfg.diffusion.batch_size, self.cfg.data.image_size
        return torch.cat([gen.encode(fit_to_model(self.train_set.load(idx[i : i + bs]), size, self.cfg.data.fit))
                          .cpu() for i in range(0, len(idx), bs)])

    def generate_key(self) -> str:
        d, g = self.cfg.diffusion, self.cfg.generate
        return sha256_json({"select": self.select_key(), "save_size": g.save_size, "precision": d.precision})

    def stage_generate(self) -> Path:
        """DDIM-sample the chosen latents back to level 0 and decode them (or copy the chosen real images), and save
        PNGs; resumable by class."""
        self.stage_select()
        out = self.root / "images"
        key = self.generate_key()
        if self.world.broadcast(self._done("generate", key, [out]) if self.world.is_main else None):
            say(f"[generate] unchanged, skipped ({out})")
            return out
        t0 = time.time()
        tensors, meta = load_tensors(self.root / "selection.safetensors")
        classes, ds, fit = meta["classes"], self.train_set, self.cfg.data.fit
        counts = tensors.get("count", torch.full((len(classes),), meta["ipc"])).tolist()  # images per class
        latents = tensors.get("latents")  # (C, ipc, c, h, w), or None: real images at tensors["image_index"]
        if latents is not None:
            gen = self.generator()
            if tuple(latents.shape[2:]) != gen.latent_shape:
                raise D3HRError(f"selection latents have shape {tuple(latents.shape[2:])} but the generator takes "
                                f"{gen.latent_shape}")
            labels_map = self.class_labels(gen)
            grid, eps_fn = self.grid(gen), self.eps_fn(gen)
        # A finished class is a folder in images.partial (written whole, then renamed); .key.json says which
        # selection and settings the folder belongs to. Under torchrun, class c is generated by rank c mod K.
        partial = self.root / "images.partial"
        key_file = partial / ".key.json"
        if self.world.is_main:
            if not key_file.is_file() or _key_of(read_json(key_file)) != key:
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
                write_json(key_file, {"key": key})
        self.world.barrier()
        bs, save_size = self.cfg.generate.batch_size, self.cfg.generate.save_size
        k = 0 if self.method == "kmeans-latent" else self.cfg.diffusion.inversion_steps  # grid level of the latents
        mine = self.world.shard(range(len(classes)))
        bar = progress(sum(counts[c] for c in mine), "generate", "img")
        folders = _class_folders(classes)
        for c in mine:
            n = counts[c]
            if (partial / folders[c]).is_dir():
                bar.update(n)
                continue
            images = []
            for i in range(0, n, bs):
                if latents is None:
                    x = fit_to_model(ds.load(tensors["image_index"][c, i : min(i + bs, n)].numpy()), ds.resolution,
                                     fit)  # (b, C, s, s) at the dataset's resolution
                else:
                    zk = latents[c, i : min(i + bs, n)]
                    y = labels_map[torch.full((len(zk),), c)]
                    x = gen.decode(ddim_sample(eps_fn, zk, y, grid, k)).cpu()  # (b, C_gen, S, S)
                    x = match_channels(x, ds.channels)  # an RGB generator on a grayscale dataset: luma
                images.append(fit_to_saved(x, ds.resolution, fit, save_size))
                bar.update(len(x))
            _save_class_pngs(partial / folders[c], torch.cat(images))
        bar.close()
        self.world.barrier()
        if self.world.is_main:
            key_file.unlink()
            replace_dir(partial, out)
            self._record("generate", key, time.time() - t0, images=sum(counts), processes=self.world.size)
        self.world.barrier()
        return out

    def write_manifest(self) -> Path:
        """manifest.json: format, dataset, classes, method, ipc, seeds, versions and the sha256 of every file d3hr
        wrote (RUN_LISTED and the PNGs generate saved): nothing else in the folder is listed as the run's."""
        import diffusers

        if not self.world.is_main:
            return self.root / "manifest.json"
        ds = self.train_set
        files = {name: sha256_file(self.root / name) for name in RUN_LISTED if (self.root / name).is_file()}
        for rel in self._written_images(_class_folders(ds.classes)):
            if not (self.root / rel).is_file():
                raise D3HRError(f"{self.root / rel} is missing; delete {self.root / 'images'} to generate it again")
            files[rel] = sha256_file(self.root / rel)
        select = self.state().get("select", {})
        pointer = self.root / "generator.json"
        manifest = {
            "format_version": FORMAT_VERSION,
            "dataset": self.data_identity(),
            "classes": {str(i): name for i, name in enumerate(ds.classes)},
            "class_folders": _class_folders(ds.classes),
            "method": self.method,
            "method_details": select.get("details", {}),
            "ipc": self.cfg.select.ipc,
            "short_classes": select.get("short_classes", {}),
            "seeds": {"seed": self.cfg.seed},
            "generator": (check(read_json(pointer), GENERATOR_POINTER, pointer)
                          if self.method in GENERATOR_METHODS and pointer.is_file() else None),
            "versions": {"d3hr": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                         "python": platform.python_version()},
            "stages": self.state(),
            "files": files,
        }
        write_json(self.root / "manifest.json", manifest)
        return self.root / "manifest.json"

    def _written_images(self, folders: list[str]) -> list[str]:
        """images/<class folder>/NNNNN.png as generate saved them: the selection's count per class (ipc by default)."""
        import json

        from safetensors import safe_open

        with safe_open(str(self.root / "selection.safetensors"), framework="pt") as f:
            counts = (f.get_tensor("count").tolist() if "count" in f.keys()
                      else [json.loads((f.metadata() or {})["d3hr"])["ipc"]] * len(folders))
        return [f"images/{folder}/{i:05d}.png" for folder, n in zip(folders, counts) for i in range(int(n))]


def _short_classes(classes: list[str], counts: list[int], ipc: int, allow: bool) -> dict[str, int]:
    """Classes with fewer than ``ipc`` training images, {name: count}; a one-line error unless ``allow``."""
    short = {name: int(n) for name, n in zip(classes, counts) if n < ipc}
    if short and not allow:
        name, n = next(iter(short.items()))
        more = f" (and {len(short) - 1} more classes)" if len(short) > 1 else ""
        raise D3HRError(f"class '{name}' has {n} training images, fewer than ipc={ipc}{more}; "
                        "pass --allow-short-classes to distill it anyway")
    return short


def _key_of(record: Any) -> Any:
    """The 'key' of a JSON record of partial state; None when the record has another shape (the state is redone)."""
    return record.get("key") if isinstance(record, dict) else None


def _pad(rows: list[torch.Tensor], ipc: int, fill: float) -> torch.Tensor:
    """Per-class rows (n_c, ...), n_c <= ipc, stacked into (C, ipc, ...); the rows of short classes end in ``fill``."""
    out = torch.full((len(rows), ipc, *rows[0].shape[1:]), fill, dtype=rows[0].dtype)
    for c, r in enumerate(rows):
        out[c, : len(r)] = r
    return out


def _class_folders(classes: list[str]) -> list[str]:
    """Safe, unique folder names that sort in class order for torchvision's ImageFolder."""
    width = len(str(len(classes) - 1))
    return [f"{i:0{width}d}_{safe_class_dir(name)}" for i, name in enumerate(classes)]


def _save_class_pngs(folder: Path, images: torch.Tensor) -> None:
    """Write (N, C, H, W) uint8 images as folder/00000.png ... into a temporary folder, then rename."""
    from PIL import Image

    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, img in enumerate(images):
        arr = img.permute(1, 2, 0).numpy()
        Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(tmp / f"{i:05d}.png")
    replace_dir(tmp, folder)


def _normality_table(before: dict[str, float], after: dict[str, float], k: int) -> str:
    rows = [("mean |skewness|", "mean_abs_skewness"), ("mean |excess kurtosis|", "mean_abs_excess_kurtosis"),
            ("share normal (K^2, p>0.05)", "share_normal")]
    lines = [f"[invert] normality per class and dimension:  VAE latents -> inverted (K={k})"]
    lines += [f"  {name:<28} {before[key]:8.3f} -> {after[key]:8.3f}" for name, key in rows]
    return "\n".join(lines)
