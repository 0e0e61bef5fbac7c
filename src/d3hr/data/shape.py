"""Shapes from the data or the generator, never from a dataset's name.

``survey`` reads the headers of a seeded sample of a dataset's images (sizes and PIL modes); ``infer_shape`` turns a
survey and, for a pretrained generator, its own image side into the resolved data shape: the side images are read,
saved and evaluated at (``resolution``), their channels, the generator's input side (``image_size``) and how the one
is fitted to the other (``fit``). ``small_architecture`` sizes a generator trained here from its input side alone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d3hr.config import DEFAULT_DIT_STEPS, DEFAULT_VAE_STEPS, Config
from d3hr.errors import D3HRError

SURVEY_FILES = 512  # image headers read to infer the shape of a folder (a seeded sample when it has more)
GRAYSCALE_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
MAX_TRAINED_SIDE = 64  # default cap on the side of a generator trained here (CPU-sized); --image-size overrides
PAD_MIN_SHARE = 0.75  # square images at least this share of the generator side are padded, smaller ones resized
WIDE_SPREAD = 2.0  # shorter sides differing by more than this factor are reported as wildly different sizes


@dataclass(frozen=True)
class Survey:
    """Sizes (width, height) and PIL modes of the images looked at, and how many images the dataset has."""

    sizes: Counter
    modes: Counter
    images: int

    @property
    def looked_at(self) -> int:
        return sum(self.sizes.values())

    @property
    def grayscale(self) -> bool:
        return all(m in GRAYSCALE_MODES for m in self.modes)

    @property
    def square(self) -> bool:
        return all(w == h for w, h in self.sizes)

    @property
    def common_side(self) -> int:
        """The most common shorter side (ties: the larger side)."""
        sides = Counter()
        for (w, h), n in self.sizes.items():
            sides[min(w, h)] += n
        return max(sides.items(), key=lambda kv: (kv[1], kv[0]))[0]

    @property
    def largest_side(self) -> int:
        """The largest shorter side."""
        return max(min(w, h) for w, h in self.sizes)

    @property
    def spread(self) -> float:
        shorter = [min(w, h) for w, h in self.sizes]
        return max(shorter) / min(shorter)

    def describe(self) -> str:
        """'28x28 L', or '200x300 to 256x256 RGB (3 sizes)'."""
        modes = "/".join(m for m, _ in self.modes.most_common())
        if len(self.sizes) == 1:
            (w, h), = self.sizes
            return f"{w}x{h} {modes}"
        lo = min(self.sizes, key=lambda s: s[0] * s[1])
        hi = max(self.sizes, key=lambda s: s[0] * s[1])
        return f"{lo[0]}x{lo[1]} to {hi[0]}x{hi[1]} {modes} ({len(self.sizes)} sizes)"


def survey_pixels(pixels_shape: tuple[int, ...], images: int) -> Survey:
    """The survey of an in-memory set of (N, C, H, W) uint8 images."""
    _, c, h, w = pixels_shape
    return Survey(Counter({(w, h): images}), Counter({"L" if c == 1 else "RGB": images}), images)


def survey_files(files: list[Path], seed: int = 0, limit: int = SURVEY_FILES) -> Survey:
    """Read the headers (size, mode) of up to ``limit`` files, a seeded sample when there are more."""
    from PIL import Image, UnidentifiedImageError

    idx = np.arange(len(files))
    if len(files) > limit:
        idx = np.sort(np.random.default_rng(seed).choice(len(files), limit, replace=False))
    sizes: Counter = Counter()
    modes: Counter = Counter()
    for i in idx:
        try:
            with Image.open(files[i]) as im:
                sizes[im.size] += 1
                modes[im.mode] += 1
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise D3HRError(f"cannot read image {files[i]}: {exc}") from None
    return Survey(sizes, modes, len(files))


def latent_factor(side: int) -> int:
    """Spatial downsampling of a VAE trained here for input ``side``: x2 up to 16 px, x4 up to 32, x8 above."""
    return 2 if side <= 16 else 4 if side <= 32 else 8


def patch_size_for(side: int) -> int:
    """DiT patch: 1 while the latent side is at most 4 (16 tokens), else 2."""
    return 1 if side // latent_factor(side) <= 4 else 2


def trained_side(native: int, cap: int = MAX_TRAINED_SIDE) -> int:
    """The input side of a generator trained here for data of shorter side ``native``: rounded up to the nearest
    side the VAE's downsampling and the DiT's patches accept (8 -> 8, 28 -> 32, 100 -> 64 with the default cap)."""
    side = min(native, cap)
    step = latent_factor(side) * patch_size_for(side)
    up = -(-side // step) * step
    if latent_factor(up) * patch_size_for(up) != step:  # rounding crossed into the next architecture: re-round
        step = latent_factor(up) * patch_size_for(up)
        up = -(-up // step) * step
    return up


def check_trained_side(side: int) -> None:
    """One-line error unless a generator trained here can take images of ``side`` pixels."""
    step = latent_factor(side) * patch_size_for(side) if side > 0 else 1
    if side < 4 or side % step:
        ok = trained_side(max(side, 4), cap=max(side, 4))
        raise D3HRError(f"data.image_size {side} cannot be taken by a generator trained here (its VAE downsamples "
                        f"x{latent_factor(max(side, 1))} with DiT patches of {patch_size_for(max(side, 1))}); "
                        f"try {ok}")


def small_architecture(side: int) -> dict[str, object]:
    """Sizes of the VAE and DiT trained here for input ``side`` (digits' 8 px and Fashion-MNIST's 32 px get the
    sizes that earlier versions named per dataset)."""
    factor, patch = latent_factor(side), patch_size_for(side)
    blocks = int(np.log2(factor)) + 1
    small_latent = side // factor <= 4
    return {"block_out_channels": [32] + [64] * (blocks - 1), "patch_size": patch,
            "num_layers": 4 if small_latent else 6, "attention_head_dim": 32 if small_latent else 64}


@dataclass(frozen=True)
class DataShape:
    """The resolved shape of a run's data and how it meets the generator."""

    resolution: int  # side at which images are read (shorter side resized, center-cropped), saved and evaluated
    channels: int  # 1 (grayscale) or 3
    image_size: int  # generator input side
    fit: str  # pad | resize, from resolution to image_size
    note: str  # the line printed once: what was inferred


def choose_fit(survey: Survey, resolution: int, image_size: int) -> str:
    """'pad' for square images slightly smaller than the generator's side (28 in 32), else 'resize'."""
    if survey.square and resolution < image_size and resolution >= PAD_MIN_SHARE * image_size:
        return "pad"
    return "resize"


def infer_shape(survey: Survey, resolution: int | None = None, channels: int | None = None,
                image_size: int | None = None, fit: str = "auto", generator_side: int | None = None,
                generator_channels: int | None = None) -> DataShape:
    """Resolve the data shape from a survey; values given (not None / 'auto') are kept.

    With a pretrained generator (``generator_side``), the generator's side is its input and images are read at the
    largest shorter side among them, capped at the generator's (photos at 256 for DiT-XL/2-256, a folder of 28 px
    images at 28). With a generator trained here images are read at their most common shorter side (capped at
    ``MAX_TRAINED_SIDE``) and the input side is that rounded up to what the small VAE and DiT accept.
    """
    native = survey.common_side
    chan = channels or (1 if survey.grayscale else 3)
    if generator_side is not None:
        size = image_size or generator_side
        native = survey.largest_side
        res = resolution or min(native, size)
    else:
        res = resolution or min(native, image_size or MAX_TRAINED_SIDE)
        size = image_size or trained_side(res)
    chosen = choose_fit(survey, res, size) if fit == "auto" else fit
    fitted = "same size, no fit" if res == size else f"fit {chosen}"
    what = f"{survey.images} images, {survey.describe()}"
    if survey.looked_at < survey.images:
        what += f" (headers of {survey.looked_at} read)"
    read = "" if (res == native and survey.square and len(survey.sizes) == 1) else \
        f", read at {res}x{res} (shorter side resized, center crop)"
    gen = f"generator {size}x{size}" + (f" ({generator_channels} channels)" if generator_channels
                                        and generator_channels != chan else "")
    note = f"[data] {what} -> {gen}, {chan} channel{'s' if chan > 1 else ''}, {fitted}{read}"
    if len(survey.sizes) > 1 and survey.spread > WIDE_SPREAD:
        note += f"; note: shorter sides differ by {survey.spread:.1f}x, every image is fitted by '{chosen}'"
    if generator_channels == 3 and chan == 1:
        note += "; grayscale data with an RGB generator: channels repeated in, luma out"
    return DataShape(res, chan, size, chosen, note)


def resolve_config(cfg: Config, survey: Survey, generator_side: int | None = None,
                   generator_channels: int | None = None) -> DataShape:
    """Fill every shape, architecture and budget left None / 'auto' in ``cfg``, in place, from the data's survey and
    (for a pretrained generator) the generator's own side and channels; returns the shape and its note."""
    d, vae, dit = cfg.data, cfg.generator.vae, cfg.generator.dit
    if generator_side is not None and d.image_size not in (None, generator_side):
        raise D3HRError(f"data.image_size {d.image_size} differs from the pretrained generator's own side "
                        f"{generator_side}: its DiT takes latents of that size only")
    shape = infer_shape(survey, d.resolution, d.channels, d.image_size, d.fit, generator_side, generator_channels)
    d.resolution, d.channels, d.image_size, d.fit = shape.resolution, shape.channels, shape.image_size, shape.fit
    if generator_side is None:  # a generator trained here: sized from its input side, budgets in steps
        if vae.block_out_channels is None or dit.patch_size is None:
            check_trained_side(d.image_size)
        arch = small_architecture(d.image_size)
        vae.block_out_channels = vae.block_out_channels or list(arch["block_out_channels"])
        dit.patch_size = dit.patch_size or int(arch["patch_size"])
        dit.num_layers = dit.num_layers or int(arch["num_layers"])
        dit.attention_head_dim = dit.attention_head_dim or int(arch["attention_head_dim"])
        if vae.steps is None and vae.epochs is None:
            vae.steps = DEFAULT_VAE_STEPS
        if dit.steps is None and dit.epochs is None:
            dit.steps = DEFAULT_DIT_STEPS
    return shape
