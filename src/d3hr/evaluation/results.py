"""RUN/eval/results.json: records keyed by what was trained, a summary over seeds, and the teachers used.

A record's key is every field in KEY_FIELDS (student, label mode, teacher and the sha256 of its weights, recipe,
epochs, seed, image set, every setting of the recipe):
a record whose key is already there is not retrained, and a changed image set or setup makes new records.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from d3hr.utils.io import read_json, sha256_json, write_json
from d3hr.utils.schema import RESULTS, check

FORMAT_VERSION = 1
KEY_FIELDS = ("student", "labels", "teacher", "teacher_sha256", "recipe", "epochs", "seed", "images_sha256", "setup")


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``, waiting for it (other processes wait too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def record_key(rec: dict[str, Any]) -> str:
    """The identity of a record: a hash of its KEY_FIELDS."""
    return sha256_json({k: rec.get(k) for k in KEY_FIELDS})


def read_results(path: Path) -> dict[str, Any]:
    """results.json, or an empty one when there is none yet."""
    if not path.is_file():
        return {"format_version": FORMAT_VERSION, "run": {}, "teachers": {}, "records": [], "summary": []}
    data = check(read_json(path), RESULTS, path)
    data.setdefault("teachers", {})
    data.setdefault("summary", summarise(data["records"]))
    return data


def append_record(path: Path, rec: dict[str, Any], run: dict[str, Any], teacher: dict[str, Any] | None) -> None:
    """Add ``rec`` (replacing one with its key) and rewrite the summary; re-read under a lock, written atomically,
    so concurrent evaluations of one run all land."""
    with file_lock(path.with_name(".lock")):
        data = read_results(path)
        key = record_key(rec)
        data["records"] = [r for r in data["records"] if record_key(r) != key] + [rec]
        data["run"] = run
        if teacher is not None:
            data.setdefault("teachers", {})[teacher["arch"]] = teacher
        data["summary"] = summarise(data["records"])
        write_json(path, data)


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std (ddof=1; 0 for a single seed) of the final top-1 over the seeds of each group."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(record_key({**r, "seed": None}), []).append(r)
    out = []
    for recs in groups.values():
        top1 = np.array([r["top1"] for r in recs], dtype=np.float64)
        out.append({**{k: recs[0].get(k) for k in KEY_FIELDS if k != "seed"}, "seeds": [r["seed"] for r in recs],
                    "n": len(recs), "top1_mean": float(top1.mean()),
                    "top1_std": float(top1.std(ddof=1)) if len(recs) > 1 else 0.0})
    return out
