"""A per-class image grid of a distilled set: one row per class, up to ``per_class`` images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from d3hr.utils.io import atomic_path


def image_grid(images_dir: str | Path, out: str | Path, per_class: int = 10, scale: int = 4) -> Path:
    """Tile ``images_dir/<class>/*.png`` into one PNG (rows = classes in folder order), magnified ``scale`` times."""
    folders = sorted(p for p in Path(images_dir).iterdir() if p.is_dir())
    rows = []
    for folder in folders:
        tiles = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))[:per_class]]
        h, w = tiles[0].shape[:2]
        tiles += [np.zeros((h, w, 3), np.uint8)] * (per_class - len(tiles))
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    out = Path(out)
    with atomic_path(out, ".png") as tmp:
        img.save(tmp, format="PNG")
    return out
