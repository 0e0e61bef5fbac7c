"""Labelled image sets (in memory or on disk) and the maps between dataset and generator pixels."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from d3hr.data.shape import SURVEY_FILES, Survey, survey_files, survey_pixels
from d3hr.errors import D3HRError


@dataclass
class ImageSet:
    """Labelled uint8 images of one split.

    Either ``pixels`` holds every image in memory as (N, C, H, W) uint8, or ``files`` lists image paths read on
    demand: converted to ``channels`` (see ``to_array``) and to a ``resolution`` square (shorter side resized,
    center crop). A file set's shape is 0 until ``reshaped`` sets it.
    """

    name: str
    classes: list[str]
    targets: np.ndarray  # (N,) int64 class index per image
    channels: int
    resolution: int  # side of the square images
    pixels: torch.Tensor | None = None  # (N, C, H, W) uint8
    files: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, indices: np.ndarray | list[int]) -> torch.Tensor:
        """Images at ``indices`` as (B, C, H, W) uint8."""
        if self.pixels is not None:
            return self.pixels[torch.as_tensor(np.asarray(indices), dtype=torch.long)]
        if not self.resolution or not self.channels:
            raise D3HRError(f"dataset '{self.name}': image shape not resolved (internal: call reshaped first)")
        return torch.stack([read_image(self.files[i], self.resolution, self.channels) for i in indices])

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.targets, minlength=len(self.classes))

    def survey(self, limit: int = SURVEY_FILES) -> Survey:
        """Sizes and modes of the images (headers of a seeded sample of at most ``limit`` files)."""
        if self.pixels is not None:
            return survey_pixels(tuple(self.pixels.shape), len(self))
        return survey_files(self.files, limit=limit)

    def reshaped(self, resolution: int, channels: int) -> ImageSet:
        """This set at ``resolution`` and ``channels``: files are read so; in-memory pixels are converted now."""
        if self.pixels is None:
            return replace(self, resolution=resolution, channels=channels)
        pixels = self.pixels
        if pixels.shape[1] != channels:
            pixels = to_uint8(match_channels(pixels.float() / 127.5 - 1.0, channels))
        if pixels.shape[-1] != resolution or pixels.shape[-2] != resolution:
            x = F.interpolate(pixels.float() / 127.5 - 1.0, size=(resolution, resolution), mode="bilinear",
                              antialias=True, align_corners=False)
            pixels = to_uint8(x)
        return replace(self, pixels=pixels.contiguous(), resolution=resolution, channels=channels)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in about [-1, 1] -> uint8 [0, 255], quantized once."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# 16-bit modes as PIL opens them; their values span 0..65535 and are scaled (not clipped) to 8 bits.
SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}


def to_array(im, channels: int, path: Path) -> np.ndarray:
    """A PIL image as (H, W, channels) uint8, converting every mode an image file can have, or a one-line error.

    16-bit grayscale (I;16*, and I within 0..65535) is scaled by 255/65535; 32-bit float (F) is refused; transparency
    (RGBA, LA, P or L with a transparent colour) is composited on white; CMYK, YCbCr, LAB, HSV and palettes go through
    RGB; grayscale data from color images is ITU-R 601 luma.
    """
    from PIL import Image

    mode = im.mode
    if mode == "F":
        raise D3HRError(f"image {path} is 32-bit float (PIL mode F): save it as 8- or 16-bit to use it")
    if mode in SIXTEEN_BIT or mode == "I":
        arr = np.asarray(im, dtype=np.int64)
        if arr.min() < 0 or arr.max() > 65535:
            raise D3HRError(f"image {path} (PIL mode {mode}) has values outside 0..65535")
        gray = np.round(arr * (255.0 / 65535.0)).astype(np.uint8)
        im = Image.fromarray(gray, mode="L")
    elif mode == "P" or "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    if im.mode != target:
        if im.mode not in ("1", "L", "RGB", "CMYK", "YCbCr", "LAB", "HSV"):
            raise D3HRError(f"image {path} has PIL mode {im.mode}, which d3hr cannot convert")
        im = im.convert("RGB").convert(target) if target == "L" and im.mode not in ("1", "RGB") else im.convert(target)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def read_image(path: Path, resolution: int, channels: int) -> torch.Tensor:
    """One image file as (channels, resolution, resolution) uint8 (shorter side resized, center crop)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            arr = to_array(im, channels, path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise D3HRError(f"cannot read image {path}: {exc}") from None
    img = Image.fromarray(arr[:, :, 0] if channels == 1 else arr)
    arr = np.asarray(_resize_center_crop(img, resolution), dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # (C, H, W)


def _resize_center_crop(im, size: int):
    """Resize the shorter side to ``size`` (bicubic) and center-crop to a square."""
    from PIL import Image

    w, h = im.size
    scale = size / min(w, h)
    if (w, h) != (size, size):
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def fit_to_model(images: torch.Tensor, size: int, fit: str) -> torch.Tensor:
    """uint8 (B, C, n, n) -> float (B, C, size, size) in [-1, 1], by centered padding (with -1) or resizing."""
    x = images.float() / 127.5 - 1.0
    n = x.shape[-1]
    if n == size:
        return x
    if fit == "pad" and size > n:
        lo = (size - n) // 2
        return F.pad(x, (lo, size - n - lo, lo, size - n - lo), value=-1.0)
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Images (B, C, H, W) with ``channels`` channels: grayscale repeated to RGB for an RGB generator, RGB to luma
    (ITU-R 601: 0.299 R + 0.587 G + 0.114 B) for a grayscale dataset."""
    have = x.shape[1]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if have == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
        return (x * w[None, :, None, None]).sum(dim=1, keepdim=True)
    raise D3HRError(f"cannot convert {have}-channel images to the {channels} channels needed")


def fit_to_saved(x: torch.Tensor, native: int, fit: str, save_size: int | None = None) -> torch.Tensor:
    """float (B, C, S, S) in about [-1, 1] -> uint8 (B, C, s, s), the inverse of ``fit_to_model``, quantized once."""
    x = x.float()
    size = x.shape[-1]
    if size != native:
        if fit == "pad" and size > native:
            lo = (size - native) // 2
            x = x[..., lo : lo + native, lo : lo + native]
        else:
            x = F.interpolate(x, size=(native, native), mode="bilinear", antialias=True, align_corners=False)
    if save_size is not None and save_size != x.shape[-1]:
        x = F.interpolate(x, size=(save_size, save_size), mode="bilinear", antialias=True, align_corners=False)
    return to_uint8(x)
