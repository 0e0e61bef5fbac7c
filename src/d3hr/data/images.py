"""Labelled image sets (in memory or on disk) and the maps between dataset and generator pixels."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from d3hr.errors import D3HRError


@dataclass
class ImageSet:
    """Labelled uint8 images of one split.

    Either ``pixels`` holds every image in memory as (N, C, H, W) uint8, or ``files`` lists image paths read on
    demand (resized to ``resolution`` and converted to ``channels``).
    """

    name: str
    classes: list[str]
    targets: np.ndarray  # (N,) int64 class index per image
    channels: int
    resolution: int  # native side of the square images
    pixels: torch.Tensor | None = None  # (N, C, H, W) uint8
    files: list[Path] = field(default_factory=list)
    _warned: set[str] = field(default_factory=set, repr=False)

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, indices: np.ndarray | list[int]) -> torch.Tensor:
        """Images at ``indices`` as (B, C, H, W) uint8."""
        if self.pixels is not None:
            return self.pixels[torch.as_tensor(np.asarray(indices), dtype=torch.long)]
        return torch.stack([self._read(self.files[i]) for i in indices])

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.targets, minlength=len(self.classes))

    def _read(self, path: Path) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()
                mode = "L" if self.channels == 1 else "RGB"
                if im.mode != mode:
                    if im.mode not in self._warned:
                        self._warned.add(im.mode)
                        warnings.warn(f"converting {im.mode} images to {mode} (first: {path})", stacklevel=2)
                    im = im.convert(mode)
                im = _resize_center_crop(im, self.resolution)
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise D3HRError(f"cannot read image {path}: {exc}") from None
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
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


_UNSAFE = re.compile(r"[^A-Za-z0-9._ +-]+")


def safe_class_dir(name: str) -> str:
    """A folder name for a class that cannot leave its parent folder: separators, NUL and '..' are replaced."""
    out = _UNSAFE.sub("_", name).strip(" .")
    if not out:
        raise D3HRError(f"class name {name!r} gives an empty folder name")
    return out
