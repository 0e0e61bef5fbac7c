"""One interface over a diffusers AutoencoderKL + DiTTransformer2DModel pair, with guidance in one forward pass."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel
from diffusers.utils import logging as diffusers_logging
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

from d3hr.data.images import match_channels
from d3hr.diffusion.ddim import make_alphas_cumprod
from d3hr.errors import D3HRError, first_line
from d3hr.utils.io import sha256_file, write_json
from d3hr.utils.progress import say

INFO_FILE = "d3hr_generator.json"
# The diffusion schedule of DiT and of the generators trained here: 1000 training steps, linear beta 1e-4..0.02.
# The one place this schedule is written; a pretrained generator without a scheduler config gets it too.
SMALL_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
# Scheduler config values d3hr's DDIM follows (the diffusers defaults); a generator's config that differs is refused.
FOLLOWED = {"trained_betas": None, "prediction_type": "epsilon", "rescale_betas_zero_snr": False}
WEIGHT_FOLDERS = ("vae", "transformer")  # the subfolders whose safetensors files load_generator reads


@dataclass
class Generator:
    """A VAE and a class-conditional noise-prediction DiT with the diffusion schedule they were trained with."""

    vae: AutoencoderKL
    transformer: DiTTransformer2DModel
    alphas_cumprod: torch.Tensor  # (T,) float64
    schedule: dict[str, Any] = field(default_factory=dict)  # num_train_timesteps, beta_start, beta_end, schedule
    info: dict[str, Any] = field(default_factory=dict)  # provenance: classes, training config, source
    precision: str = "fp32"  # autocast dtype for model calls: fp32 | bf16

    @property
    def num_labels(self) -> int:
        """Number of conditional labels; label ``num_labels`` is the null (unconditional) label."""
        return int(self.transformer.config.num_embeds_ada_norm)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def image_size(self) -> int:
        """The generator's own image side: its latent side times the VAE's downsampling."""
        return image_side(dict(self.vae.config), dict(self.transformer.config))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = int(self.transformer.config.in_channels)
        s = int(self.transformer.config.sample_size)
        return (c, s, s)

    def to(self, device: torch.device | str) -> Generator:
        self.vae.to(device)
        self.transformer.to(device)
        return self

    def eval(self) -> Generator:
        self.vae.eval()
        self.transformer.eval()
        return self

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> scaled latents z0 (B, c, h, w): posterior mean, or a seeded sample."""
        x = match_channels(x, self.vae.config.in_channels)  # grayscale data into an RGB VAE: channels repeated
        dist = self.vae.encode(x.to(self.device)).latent_dist
        z = dist.sample(generator=generator) if sample else dist.mean
        return z.float() * self.scaling_factor

    @torch.no_grad()
    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, c, h, w) -> images (B, C, H, W), roughly in [-1, 1]."""
        return self.vae.decode(z0.to(self.device) / self.scaling_factor).sample.float()

    @torch.no_grad()
    def eps(self, zt: torch.Tensor, t: int, labels: torch.Tensor, guidance: float) -> torch.Tensor:
        """Noise prediction with classifier-free guidance: eps_u + s (eps_c - eps_u), one batched forward pass.

        s = 1 uses the conditional prediction alone and s = 0 the unconditional one (one forward of B each).
        """
        b = zt.shape[0]
        labels = labels.to(self.device)
        if guidance == 1.0 or guidance == 0.0:
            lab = labels if guidance == 1.0 else torch.full_like(labels, self.num_labels)
            return self._forward(zt, t, lab)
        null = torch.full_like(labels, self.num_labels)
        out = self._forward(torch.cat([zt, zt]), t, torch.cat([labels, null]))  # (2B, c, h, w)
        cond, uncond = out[:b], out[b:]
        return uncond + guidance * (cond - uncond)

    def _forward(self, zt: torch.Tensor, t: int, labels: torch.Tensor) -> torch.Tensor:
        c = zt.shape[1]
        timestep = torch.full((zt.shape[0],), t, device=self.device, dtype=torch.long)
        with self._autocast():
            out = self.transformer(zt.to(self.device), timestep=timestep, class_labels=labels).sample
        return out[:, :c].float()  # DiT-XL/2 also predicts a variance in channels c..2c: drop it


def image_side(vae_config: dict[str, Any], transformer_config: dict[str, Any]) -> int:
    """Image side of a VAE + DiT pair from their configs: the DiT's latent ``sample_size`` times the VAE's
    downsampling (2 per block after the first); the VAE's ``sample_size`` when the DiT gives none."""
    factor = 2 ** (len(vae_config.get("block_out_channels", [0])) - 1)
    latent = transformer_config.get("sample_size")
    return int(latent) * factor if latent else int(vae_config["sample_size"])


def _configs(source: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The VAE and DiT configs of a diffusers generator directory or hub id, or a one-line error."""
    diffusers_logging.set_verbosity_error()
    try:
        vae = AutoencoderKL.load_config(str(source), subfolder="vae")
        dit = DiTTransformer2DModel.load_config(str(source), subfolder="transformer")
    except (OSError, ValueError) as exc:
        raise D3HRError(f"cannot load generator {source}: {first_line(exc)}") from None
    return vae, dit


def generator_shape(source: str | Path) -> tuple[int, int]:
    """(image side, image channels) of a diffusers generator directory or hub id, from its configs alone."""
    vae, dit = _configs(source)
    return image_side(vae, dit), int(vae.get("in_channels", 3))


def generator_num_labels(source: str | Path) -> int:
    """The number of class labels of a generator's DiT (label ``num_labels`` is the null label), from its config."""
    return int(_configs(source)[1]["num_embeds_ada_norm"])


def generator_sha256(source: str | Path) -> str:
    """The generator's identity: sha256 over the sorted relative paths and the sha256 of the bytes of every
    safetensors file under vae/ and transformer/ (the weights load_generator reads), one line each, of a diffusers
    directory or of a hub id's snapshot in the local Hugging Face cache (fetched when missing and allowed).

    Configs are left out: diffusers rewrites them with its version; a change that matters shows in the images."""
    local = Path(str(source))
    if not local.is_dir():
        from huggingface_hub import snapshot_download

        try:
            local = Path(snapshot_download(str(source), allow_patterns=[f"{p}/*" for p in WEIGHT_FOLDERS]))
        except Exception as exc:  # the hub client raises many types: offline, unknown repo, no access
            raise D3HRError(f"cannot read the weight files of generator {source}: {first_line(exc)}") from None
    files = sorted(p.relative_to(local).as_posix() for part in WEIGHT_FOLDERS
                   for p in (local / part).rglob("*.safetensors") if p.is_file())
    if not files:
        raise D3HRError(f"generator {source} has no safetensors weight files under {' or '.join(WEIGHT_FOLDERS)}/")
    listing = "".join(f"{rel} {_weights_file_sha256(local / rel)}\n" for rel in files)
    return hashlib.sha256(listing.encode()).hexdigest()


_FILE_SHA256: dict[tuple[str, int, int], str] = {}  # (resolved path, size, mtime_ns) -> sha256, for this process


def _weights_file_sha256(path: Path) -> str:
    """sha256_file, once per file version in a process: every run of a compare names the same generator, and a
    pretrained DiT-XL/2 is 3 GB to read."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_SHA256:
        _FILE_SHA256[key] = sha256_file(path)
    return _FILE_SHA256[key]


def build_small(num_classes: int, channels: int, image_size: int, block_out_channels: list[int],
                latent_channels: int, layers_per_block: int, num_layers: int, num_attention_heads: int,
                attention_head_dim: int, patch_size: int) -> Generator:
    """A small AutoencoderKL and class-conditional DiT (with a null label for guidance), randomly initialised."""
    n_blocks = len(block_out_channels)
    latent_size = image_size // 2 ** (n_blocks - 1)
    if latent_size * 2 ** (n_blocks - 1) != image_size or latent_size % patch_size:
        raise D3HRError(f"image size {image_size} does not fit {n_blocks} VAE blocks and patch size {patch_size}")
    groups = min(32, min(block_out_channels))
    vae = AutoencoderKL(
        in_channels=channels, out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * n_blocks, up_block_types=("UpDecoderBlock2D",) * n_blocks,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        latent_channels=latent_channels, norm_num_groups=groups, sample_size=image_size, scaling_factor=1.0,
    )
    dit = DiTTransformer2DModel(
        num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim, in_channels=latent_channels,
        out_channels=latent_channels, num_layers=num_layers, sample_size=latent_size, patch_size=patch_size,
        num_embeds_ada_norm=num_classes,
    )
    schedule = dict(SMALL_SCHEDULE)
    return Generator(vae, dit, make_alphas_cumprod(**schedule), schedule)


def save_generator(gen: Generator, path: str | Path) -> None:
    """Write the diffusers layout (vae/, transformer/, scheduler/) and d3hr's provenance file, as safetensors."""
    path = Path(path)
    gen.vae.save_pretrained(path / "vae", safe_serialization=True)
    gen.transformer.save_pretrained(path / "transformer", safe_serialization=True)
    DDIMScheduler(**gen.schedule, clip_sample=False, set_alpha_to_one=False).save_pretrained(path / "scheduler")
    write_json(path / INFO_FILE, gen.info)


def load_generator(source: str | Path, device: torch.device | str = "cpu", precision: str = "fp32") -> Generator:
    """Load a VAE + DiT from a diffusers directory or hub id (``vae/``, ``transformer/``, optional ``scheduler/``).

    Weights load only from safetensors files; a directory holding only pickled weights is refused.
    """
    source = str(source)
    local = Path(source)
    diffusers_logging.set_verbosity_error()
    if local.exists():
        if not local.is_dir():
            raise D3HRError(f"generator {source} is not a directory")
        for part in ("vae", "transformer"):
            if not (local / part / "config.json").is_file():
                raise D3HRError(f"generator directory {source} lacks {part}/config.json (diffusers layout needed)")
    try:
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", use_safetensors=True)
        dit = DiTTransformer2DModel.from_pretrained(source, subfolder="transformer", use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise D3HRError(f"cannot load generator {source}: {first_line(exc)}") from None
    schedule = generator_schedule(source)
    info_file = local / INFO_FILE
    info = json.loads(info_file.read_text()) if info_file.is_file() else {"source": source}
    if dit.config.in_channels != vae.config.latent_channels:
        raise D3HRError(f"generator {source}: DiT takes {dit.config.in_channels} channels but the VAE gives "
                        f"{vae.config.latent_channels}")
    gen = Generator(vae, dit, make_alphas_cumprod(**schedule), schedule, info, precision)
    return gen.to(device).eval()


def generator_schedule(source: str | Path) -> dict[str, Any]:
    """The diffusion schedule (SMALL_SCHEDULE's keys) in the scheduler config of a diffusers generator directory or
    hub id (``scheduler/scheduler_config.json``), so that alphas_cumprod are the generator's own.

    A generator without a scheduler config (no ``scheduler/`` folder; for a hub id, the hub answers that the file
    does not exist) gets DiT's schedule, SMALL_SCHEDULE, and a note on stderr saying so. A config that cannot be
    read (or, for a hub id, fetched) or that d3hr cannot follow (trained betas, a prediction other than eps) is a
    D3HRError. Grid settings of the config (timestep_spacing, steps_offset, set_alpha_to_one) are not used: d3hr
    walks its own grid (d3hr.diffusion.ddim.DDIMGrid).
    """
    source = str(source)
    try:
        conf = DDIMScheduler.load_config(source, subfolder="scheduler")
    except OSError as exc:
        local = Path(source)
        absent = (not (local / "scheduler").exists() if local.is_dir() else
                  isinstance(exc.__context__, EntryNotFoundError)  # the hub's answer, kept by diffusers' OSError
                  and not isinstance(exc.__context__, LocalEntryNotFoundError))  # offline and not cached: unknown
        if not absent:
            raise D3HRError(f"cannot read the scheduler config of generator {source}: {first_line(exc)}") from None
        say(f"[generator] {source} has no scheduler config: using DiT's diffusion schedule {SMALL_SCHEDULE}")
        return dict(SMALL_SCHEDULE)
    unfit = {k: conf[k] for k, ok in FOLLOWED.items() if k in conf and conf[k] != ok}
    if conf.get("beta_schedule", "linear") not in ("linear", "scaled_linear"):
        unfit["beta_schedule"] = conf["beta_schedule"]
    if unfit:
        raise D3HRError(f"generator {source}: its scheduler config sets {unfit}; d3hr follows eps-predicting "
                        "generators with a linear or scaled_linear beta schedule")
    return {k: conf.get(k, v) for k, v in SMALL_SCHEDULE.items()}
