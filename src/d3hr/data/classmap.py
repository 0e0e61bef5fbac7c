"""Class maps: from the dataset's class names to the generator's label indices."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from d3hr.errors import D3HRError


def imagenet_wnid_to_index() -> dict[str, int]:
    """ILSVRC-2012 wnid -> label index in the standard order (sorted wnids), the order DiT-XL/2 uses."""
    text = resources.files("d3hr.data").joinpath("imagenet_classes.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines()[1:] if line.strip()]
    return {wnid: int(index) for index, wnid, *_ in rows}


def load_class_map(spec: str, classes: list[str], num_labels: int) -> list[int]:
    """Label index per class from 'imagenet' (wnid folder names) or a JSON file {class name: index}.

    Raises a one-line error naming the classes without an index, or indices outside [0, num_labels).
    """
    if spec == "imagenet":
        mapping = imagenet_wnid_to_index()
    else:
        path = Path(spec)
        try:
            mapping = json.loads(path.read_text())
        except FileNotFoundError:
            raise D3HRError(f"class map file not found: {spec}") from None
        except json.JSONDecodeError as exc:
            raise D3HRError(f"class map {spec} is not valid JSON: {exc}") from None
        if not isinstance(mapping, dict):
            raise D3HRError(f"class map {spec} must be a JSON object {{class name: label index}}")
    missing = [c for c in classes if c not in mapping]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise D3HRError(f"class map '{spec}' has no label index for {len(missing)} classes: {shown}")
    labels = [mapping[c] for c in classes]
    bad = [(c, v) for c, v in zip(classes, labels) if not isinstance(v, int) or not 0 <= v < num_labels]
    if bad:
        raise D3HRError(f"class map '{spec}': label {bad[0][1]!r} of class '{bad[0][0]}' is outside "
                        f"[0, {num_labels})")
    return labels
