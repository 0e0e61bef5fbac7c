"""Write a user-style image folder from Fashion-MNIST: ``OUT/train/<class>/*.png`` and ``OUT/test/<class>/*.png``.

The folder that the "Your own images" measurements in the README use (10 classes x 400 training images, 28x28
grayscale PNGs, plus 100 test images per class): ``python bench/make_image_folder.py OUT``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from d3hr.config import DataConfig
from d3hr.data import load_dataset
from d3hr.runfolder import safe_class_dir


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train-per-class", type=int, default=400)
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args()
    n = write_folder(args.out, args.train_per_class, args.test_per_class)
    print(f"wrote {n} PNGs under {args.out}")


if __name__ == "__main__":
    main()
