"""Dataset registry: name -> loader of an ImageSet per split. Shapes come from the images (d3hr.data.shape)."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from d3hr.config import DataConfig
from d3hr.data.images import ImageSet
from d3hr.data.shape import infer_shape
from d3hr.errors import D3HRError
from d3hr.runfolder import IMAGE_SUFFIXES

Loader = Callable[[DataConfig, str], ImageSet]
DATASETS: dict[str, Loader] = {}

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def register(name: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        DATASETS[name] = fn
        return fn

    return deco


def load_raw(cfg: DataConfig, split: str = "train") -> ImageSet:
    """``split`` of the dataset as its loader finds it: in-memory pixels at their own shape, or a list of files whose
    shape (``resolution``, ``channels``) is still 0 unless ``cfg`` gives it. ``cfg.limit`` caps the train split."""
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


def load_dataset(cfg: DataConfig, split: str = "train") -> ImageSet:
    """Load ``split`` ('train' or 'test') at the shape ``cfg`` gives (``resolution``, ``channels``); a shape left None
    is inferred from the training images as for a generator trained here (see d3hr.data.shape)."""
    ds = load_raw(cfg, split)
    resolution, channels = cfg.resolution, cfg.channels
    if resolution is None or channels is None:
        train = ds if split == "train" else load_raw(cfg, "train")
        shape = infer_shape(train.survey(), resolution, channels, cfg.image_size)
        resolution, channels = shape.resolution, shape.channels
    return ds.reshaped(resolution, channels)


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


def _listed(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def _train_classes(cfg: DataConfig, needs: str) -> tuple[Path, Path, list[str]]:
    """(root, root/train, the sorted class folder names under it), or a one-line error; ``needs`` says what --root
    must hold."""
    if not cfg.root:
        raise D3HRError(f"dataset '{cfg.name}' needs --root ({needs})")
    root = Path(cfg.root)
    train = root / "train"
    if not train.is_dir():
        raise D3HRError(f"{cfg.name} root {root} has no train/ folder")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not classes:
        raise D3HRError(f"{train} has no class folders")
    return root, train, classes


@register("imagefolder")
def _imagefolder(cfg: DataConfig, split: str) -> ImageSet:
    """``root/train/<class>/*`` and ``root/test`` (or ``root/val``); classes are the sorted train folder names."""
    root, train, classes = _train_classes(cfg, "with train/<class>/ folders")
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
        found = _listed(class_dir)
        if split == "train" and not found:
            raise D3HRError(f"class folder {class_dir} has no images")
        files += found
        targets += [c] * len(found)
    return ImageSet("imagefolder", classes, np.asarray(targets, dtype=np.int64), 0, 0, files=files)


@register("tiny-imagenet")
def _tiny_imagenet(cfg: DataConfig, split: str) -> ImageSet:
    """Tiny-ImageNet's own layout: ``train/<wnid>/images/*.JPEG``; the test split is ``val/images/*`` labelled by
    ``val/val_annotations.txt`` (file, wnid, box). Classes are the sorted wnids (so ``--class-map imagenet``
    applies)."""
    root, train, classes = _train_classes(cfg, "the folder with train/ and val/")
    index = {wnid: c for c, wnid in enumerate(classes)}
    files: list[Path] = []
    targets: list[int] = []
    if split == "train":
        for c, wnid in enumerate(classes):
            found = _listed(train / wnid / "images")
            if not found:
                raise D3HRError(f"class folder {train / wnid / 'images'} has no images")
            files += found
            targets += [c] * len(found)
    else:
        notes = root / "val" / "val_annotations.txt"
        if not notes.is_file():
            raise D3HRError(f"tiny-imagenet root {root} has no val/val_annotations.txt")
        for n, line in enumerate(notes.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in index:
                raise D3HRError(f"{notes}:{n}: expected 'file<TAB>wnid...' with a wnid of train/, got {line[:60]!r}")
            path = root / "val" / "images" / parts[0]
            if not path.is_file():
                raise D3HRError(f"{notes}:{n}: image {path} does not exist")
            files.append(path)
            targets.append(index[parts[1]])
    return ImageSet("tiny-imagenet", classes, np.asarray(targets, dtype=np.int64), 0, 0, files=files)
