"""A per-class image grid of a distilled set: one row per class, up to ``per_class`` images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from d3hr.errors import D3HRError
from d3hr.runfolder import class_folders
from d3hr.utils.io import atomic_path


def class_row(folder: str | Path, per_class: int = 10, max_side: int | None = None) -> np.ndarray | None:
    """The first ``per_class`` PNGs of ``folder`` side by side, (h, per_class * w, 3) uint8, black where a class has
    fewer; None when it has none. Tiles larger than ``max_side`` are shrunk to it (for large images in reports)."""
    tiles = []
    for p in sorted(Path(folder).glob("*.png"))[:per_class]:
        try:
            with Image.open(p) as im:
                tiles.append(im.convert("RGB"))
        except (OSError, SyntaxError) as exc:  # truncated or not an image (PIL raises SyntaxError for some)
            raise D3HRError(f"{p} is not a readable image: {exc}".splitlines()[0]) from None
    if not tiles:
        return None
    w, h = tiles[0].size
    if max_side is not None and max(w, h) > max_side:
        w, h = max(1, round(w * max_side / max(w, h))), max(1, round(h * max_side / max(w, h)))
    arrays = [np.asarray(t if t.size == (w, h) else t.resize((w, h), Image.LANCZOS)) for t in tiles]
    arrays += [np.zeros((h, w, 3), np.uint8)] * (per_class - len(arrays))
    return np.concatenate(arrays, axis=1)


def image_grid(images_dir: str | Path, out: str | Path, per_class: int = 10, scale: int = 4) -> Path:
    """Tile ``images_dir/<class>/*.png`` into one PNG (rows = classes in folder order), magnified ``scale`` times."""
    rows = [r for r in (class_row(f, per_class) for f in class_folders(images_dir)) if r is not None]
    grid = np.concatenate(rows, axis=0)
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    out = Path(out)
    with atomic_path(out, ".png") as tmp:
        img.save(tmp, format="PNG")
    return out
