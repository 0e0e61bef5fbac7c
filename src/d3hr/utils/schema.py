"""Shapes of the JSON files d3hr reads back (manifest, stages, results, pointers, markers), checked on load.

A spec is a Python type (``str``, ``int``, ``bool``, ``dict``, ``list``), ``NUMBER`` (an int or a float), or one of
the small classes below; ``check`` walks a value against it and raises one ``SchemaError`` line naming the file,
the place in it and what was expected. Keys a spec does not name are allowed (newer writers may add fields).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from d3hr.errors import D3HRError

NUMBER = "number"


class SchemaError(D3HRError):
    """A file d3hr wrote (or should have) has the wrong shape."""


@dataclass(frozen=True)
class Obj:
    """A JSON object with ``required`` and ``optional`` fields, each with its spec."""

    required: dict[str, Any] = field(default_factory=dict)
    optional: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MapOf:
    """A JSON object whose values all match ``value``; keys must satisfy ``key`` (described by ``key_doc``)."""

    value: Any
    key: Callable[[str], bool] | None = None
    key_doc: str = ""


@dataclass(frozen=True)
class ListOf:
    item: Any


@dataclass(frozen=True)
class Nullable:
    spec: Any


@dataclass(frozen=True)
class Match:
    """A string matching ``pattern`` in full, described by ``doc``."""

    pattern: str
    doc: str


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _expected(spec: Any) -> str:
    if isinstance(spec, Obj | MapOf) or spec is dict:
        return "an object"
    if isinstance(spec, ListOf) or spec is list:
        return "a list"
    if isinstance(spec, Nullable):
        return _expected(spec.spec) + " or null"
    if isinstance(spec, Match):
        return spec.doc
    return {str: "a string", int: "an integer", bool: "a boolean", NUMBER: "a number"}[spec]


def _matches(value: Any, spec: Any) -> bool:
    if spec is NUMBER:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if spec is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(spec, Match):
        return isinstance(value, str) and re.fullmatch(spec.pattern, value) is not None
    if isinstance(spec, Obj | MapOf):
        return isinstance(value, dict)
    if isinstance(spec, ListOf):
        return isinstance(value, list)
    return isinstance(value, spec)


def _walk(value: Any, spec: Any, where: str) -> None:
    if isinstance(spec, Nullable):
        if value is None:
            return
        spec = spec.spec
    if not _matches(value, spec):
        raise SchemaError(f"{where or 'the top level'} must be {_expected(spec)}, got {_kind(value)}")
    if isinstance(spec, Obj):
        for name, sub in spec.required.items():
            if name not in value:
                raise SchemaError(f"{where or 'the top level'} lacks the field {name!r}")
            _walk(value[name], sub, f"{where}[{name!r}]")
        for name, sub in spec.optional.items():
            if name in value:
                _walk(value[name], sub, f"{where}[{name!r}]")
    elif isinstance(spec, MapOf):
        for k, v in value.items():
            if spec.key is not None and not spec.key(k):
                raise SchemaError(f"{where or 'the top level'} has the key {k!r}, which is not {spec.key_doc}")
            _walk(v, spec.value, f"{where}[{k!r}]")
    elif isinstance(spec, ListOf):
        for i, v in enumerate(value):
            _walk(v, spec.item, f"{where}[{i}]")


def check(value: Any, spec: Any, path: str | Path) -> Any:
    """``value`` if it matches ``spec``; else a one-line SchemaError naming ``path`` and the place at fault."""
    try:
        _walk(value, spec, "")
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}; it was not written by d3hr or was changed since") from None
    return value


def relative_path(name: str) -> bool:
    """A relative POSIX path inside its folder: no NUL, no backslash, not absolute, no empty, '.' or '..' part."""
    parts = name.split("/")
    return ("\x00" not in name and "\\" not in name and not name.startswith("/")
            and all(p not in ("", ".", "..") for p in parts))


def _index(name: str) -> bool:
    return name.isascii() and name.isdigit() and (name == "0" or not name.startswith("0"))


SHA256 = Match(r"[0-9a-f]{64}", "a sha256 hex digest")
FOLDER_NAME = Match(r"[^/\\\x00]+", "a folder name")
NORMALITY = MapOf(NUMBER)
STAGE = Obj({"key": str}, {"seconds": NUMBER, "peak_rss_mb": NUMBER, "path": str, "processes": int, "images": int,
                           "threads": int, "device": str, "kernels": str,
                           "from_cache": str, "normality_z0": NORMALITY, "normality_zk": NORMALITY,
                           "mean_loss": NUMBER, "mean_loss_gain_over_first": NUMBER, "short_classes": MapOf(int),
                           "details": dict, "inversion_steps": int, "subsample": dict, "depth": dict,
                           "covariance": str, "covariance_fit": dict, "sha256": SHA256})
STAGES = MapOf(STAGE)
MANIFEST = Obj(
    {"files": MapOf(SHA256, relative_path, "a relative path inside the run folder"),
     "classes": MapOf(str, _index, "a class index (0, 1, ...)")},
    {"format_version": int, "class_folders": ListOf(FOLDER_NAME), "method": str, "ipc": int, "stages": STAGES,
     "short_classes": MapOf(int), "dataset": Nullable(dict), "seeds": dict, "generator": Nullable(dict),
     "versions": MapOf(str), "method_details": dict})
SUMMARY_ROW = Obj({"top1_mean": NUMBER, "top1_std": NUMBER},
                  {"student": str, "labels": str, "epochs": int, "n": int, "teacher": Nullable(str),
                   "images_sha256": Nullable(str), "seeds": ListOf(int)})
RECORD = Obj({"top1": NUMBER, "seed": int}, {"student": str, "labels": str, "epochs": int, "teacher": Nullable(str),
                                             "images_sha256": Nullable(str), "setup": dict,
                                             "generator_sha256": Nullable(SHA256),
                                             "selection_teacher_sha256": Nullable(SHA256)})
TEACHER = Obj({}, {"arch": str, "epochs": int, "train_images": int, "test_top1": Nullable(NUMBER), "path": str})
RESULTS = Obj({"records": ListOf(RECORD)}, {"format_version": int, "run": dict, "teachers": MapOf(TEACHER),
                                            "summary": ListOf(SUMMARY_ROW)})
COMPARE_CELL = Obj({"method": str, "ipc": Nullable(int), "seed": int, "labels": str, "sweep": Nullable(list),
                    "student": str, "epochs": int, "top1": NUMBER},  # ipc None: the full-data row
                   {"teacher": Nullable(TEACHER), "run": str})
QUALITY_CELL = Obj({"method": str, "ipc": int, "seed": int, "sweep": Nullable(list), "k": int},
                   {name: Nullable(NUMBER) for name in ("fid", "precision", "recall", "density", "coverage",
                                                        "diversity", "real_diversity")})
COMPARE_RESULTS = Obj({"cells": ListOf(COMPARE_CELL)}, {"dataset": str, "student": str,
                                                       "set_metrics": Obj({"cells": ListOf(QUALITY_CELL)})})
READOUT = Obj({"n_real": int, "n_fake": int}, {name: Nullable(NUMBER) for name in (
    "fid", "precision", "recall", "density", "coverage", "diversity", "real_diversity")})
METRICS = Obj({"key": str, "k": int, "features": Obj({"extractor": str, "sha256": SHA256, "dim": int}),
               "overall": READOUT, "classes": MapOf(READOUT, _index, "a class index (0, 1, ...)")},
              {"format_version": int, "run": dict, "real": dict, "images_sha256": str})
GENERATOR_POINTER = Obj({"path": str}, {"key": str, "pretrained": bool})
MARKER = Obj({"format_version": int, "kind": str})
PACK_FORMS = ("statistics", "latents", "images")  # what a packed set is regenerated from (d3hr.distillation.pack)
PACK = Obj({"format": str, "format_version": int, "d3hr": str, "method": str,
            "form": Match("|".join(PACK_FORMS), " or ".join(PACK_FORMS)), "ipc": int,
            "classes": ListOf(str), "config": dict, "keys": Obj({"select": SHA256, "generate": SHA256}),
            "dataset": dict, "generator": Nullable(Obj({"sha256": SHA256, "hint": str})),
            "generation": Obj({}, {"threads": Nullable(int), "device": Nullable(str), "processes": Nullable(int),
                                   "kernels": Nullable(str)}),
            "method_details": dict, "short_classes": MapOf(int)},
           {"latent_shape": Nullable(ListOf(int)), "strategy": Nullable(str)})


def check_manifest(manifest: Any, path: str | Path) -> dict[str, Any]:
    """RUN/manifest.json, checked: the MANIFEST spec, class indices 0..C-1 and one class folder per class."""
    check(manifest, MANIFEST, path)
    n = len(manifest["classes"])
    if sorted(int(k) for k in manifest["classes"]) != list(range(n)):
        raise SchemaError(f"{path}: ['classes'] must be indexed 0..{n - 1}; it was not written by d3hr or was "
                          "changed since")
    folders = manifest.get("class_folders")
    if folders is not None and len(folders) != n:
        raise SchemaError(f"{path}: ['class_folders'] has {len(folders)} entries for {n} classes; it was not "
                          "written by d3hr or was changed since")
    return manifest
