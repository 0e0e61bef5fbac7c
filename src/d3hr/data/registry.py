"""Dataset registry: name -> loader of an ImageSet per split, plus per-dataset generator presets."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from d3hr.config import Config, DataConfig
from d3hr.data.images import ImageSet
from d3hr.errors import D3HRError

Loader = Callable[[DataConfig, str], ImageSet]
DATASETS: dict[str, Loader] = {}

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}

# Generator presets by dataset: image size, fit and small-model sizes (written out resolved in config.yaml).
_SMALL_32 = {"image_size": 32, "fit": "resize", "vae_channels": [32, 64, 64], "vae_epochs": 1,
             "patch_size": 2, "dit_layers": 6, "dit_head_dim": 64, "dit_epochs": 5}
PRESETS: dict[str, dict[str, Any]] = {
    "digits": {"image_size": 8, "fit": "pad", "vae_channels": [32, 64], "vae_epochs": 40,
               "patch_size": 1, "dit_layers": 4, "dit_head_dim": 32, "dit_epochs": 150},
    "fashion-mnist": {**_SMALL_32, "fit": "pad"},
    "mnist": {**_SMALL_32, "fit": "pad"},
    "cifar10": _SMALL_32,
    "cifar100": _SMALL_32,
    "imagefolder": {**_SMALL_32, "image_size": 64, "vae_channels": [32, 64, 64, 64]},
}


def register(name: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        DATASETS[name] = fn
        return fn

    return deco


def dataset_preset(name: str) -> dict[str, Any]:
    """Generator-side defaults for a registered dataset."""
    if name not in PRESETS:
        raise D3HRError(f"unknown dataset '{name}'; choose from {', '.join(DATASETS)}")
    return PRESETS[name]


def resolve_presets(cfg: Config) -> Config:
    """Fill every preset-driven field left as None (or 'auto') from the dataset's preset, in place."""
    p = dataset_preset(cfg.data.name)
    d, vae, dit = cfg.data, cfg.generator.vae, cfg.generator.dit
    d.image_size = d.image_size or p["image_size"]
    d.fit = p["fit"] if d.fit == "auto" else d.fit
    vae.block_out_channels = vae.block_out_channels or list(p["vae_channels"])
    vae.epochs = p["vae_epochs"] if vae.epochs is None else vae.epochs
    dit.patch_size = dit.patch_size or p["patch_size"]
    dit.num_layers = dit.num_layers or p["dit_layers"]
    dit.attention_head_dim = dit.attention_head_dim or p["dit_head_dim"]
    dit.epochs = p["dit_epochs"] if dit.epochs is None else dit.epochs
    return cfg


def load_dataset(cfg: DataConfig, split: str = "train") -> ImageSet:
    """Load ``split`` ('train' or 'test') of the dataset named in ``cfg``; ``cfg.limit`` caps the train split."""
    if cfg.name not in DATASETS:
        raise D3HRError(f"unknown dataset '{cfg.name}'; choose from {', '.join(DATASETS)}")
    ds = DATASETS[cfg.name](cfg, split)
    if split == "train" and cfg.limit is not None and cfg.limit < len(ds):
        ds.targets = ds.targets[: cfg.limit]
        if ds.pixels is not None:
            ds.pixels = ds.pixels[: cfg.limit]
        else:
            ds.files = ds.files[: cfg.limit]
    if len(ds) == 0:
        raise D3HRError(f"dataset '{cfg.name}' ({split}) has no images")
    return ds


@register("digits")
def _digits(cfg: DataConfig, split: str) -> ImageSet:
    """scikit-learn's 8x8 digits, split 80/20 stratified with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    pixels = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    idx_train, idx_test = train_test_split(np.arange(len(d.target)), test_size=0.2, random_state=0,
                                           stratify=d.target)
    idx = np.sort(idx_train if split == "train" else idx_test)
    return ImageSet("digits", [str(c) for c in range(10)], d.target[idx].astype(np.int64), 1, 8,
                    pixels=torch.from_numpy(pixels[idx]).unsqueeze(1))


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), as used by MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise D3HRError(f"cannot read IDX file {path}: {exc}") from None


def _idx_file(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise D3HRError(f"missing {stem}[.gz] in {root}")


@register("fashion-mnist")
def _fashion_mnist(cfg: DataConfig, split: str) -> ImageSet:
    """Fashion-MNIST from four IDX files (Debian's dataset-fashion-mnist by default, or data.root)."""
    root = Path(cfg.root) if cfg.root else FASHION_MNIST_DIR
    if not root.is_dir():
        raise D3HRError(f"Fashion-MNIST not found at {root}: install Debian's dataset-fashion-mnist or pass --root")
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(_idx_file(root, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_idx_file(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    if len(images) != len(labels):
        raise D3HRError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels in {root}")
    return ImageSet("fashion-mnist", list(FASHION_CLASSES), labels, 1, 28,
                    pixels=torch.from_numpy(images.copy()).unsqueeze(1))


def _torchvision(cls_name: str, channels: int) -> Loader:
    def load(cfg: DataConfig, split: str) -> ImageSet:
        import torchvision

        if not cfg.root:
            raise D3HRError(f"dataset '{cfg.name}' needs --root (a torchvision root folder)")
        cls = getattr(torchvision.datasets, cls_name)
        try:
            ds = cls(cfg.root, train=(split == "train"), download=cfg.download)
        except RuntimeError as exc:
            raise D3HRError(f"{cfg.name} not found under {cfg.root} ({exc}); pass --download to fetch it") from None
        data = ds.data if isinstance(ds.data, np.ndarray) else ds.data.numpy()
        data = data[..., None] if data.ndim == 3 else data  # (N, H, W, C)
        pixels = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).contiguous()
        return ImageSet(cfg.name, list(ds.classes), np.asarray(ds.targets, dtype=np.int64), channels,
                        data.shape[1], pixels=pixels)

    return load


DATASETS["mnist"] = _torchvision("MNIST", 1)
DATASETS["cifar10"] = _torchvision("CIFAR10", 3)
DATASETS["cifar100"] = _torchvision("CIFAR100", 3)


@register("imagefolder")
def _imagefolder(cfg: DataConfig, split: str) -> ImageSet:
    """``root/train/<class>/*`` and ``root/test`` (or ``root/val``); classes are the sorted train folder names."""
    if not cfg.root:
        raise D3HRError("dataset 'imagefolder' needs --root with train/<class>/ folders")
    root = Path(cfg.root)
    train = root / "train"
    if not train.is_dir():
        raise D3HRError(f"imagefolder root {root} has no train/ folder")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not classes:
        raise D3HRError(f"{train} has no class folders")
    if split == "train":
        folder = train
    else:
        folder = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
        if folder is None:
            raise D3HRError(f"imagefolder root {root} has no test/ or val/ folder")
    files: list[Path] = []
    targets: list[int] = []
    for c, name in enumerate(classes):
        class_dir = folder / name
        found = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
            if class_dir.is_dir() else []
        if split == "train" and not found:
            raise D3HRError(f"class folder {class_dir} has no images")
        files += found
        targets += [c] * len(found)
    size = cfg.image_size or PRESETS["imagefolder"]["image_size"]
    return ImageSet("imagefolder", classes, np.asarray(targets, dtype=np.int64), 3, size, files=files)
