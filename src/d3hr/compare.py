"""A grid of methods x IPC x distillation seeds (x an optional config sweep), each cell distilled and evaluated.

Every cell is an ordinary run folder under OUT/runs/, so an interrupted compare resumes: finished stages and finished
evaluation records are skipped. The generator, the inversion statistics and the teacher are shared by all cells that
can share them (generator, statistics and teacher caches). The whole grid is checked before the first cell starts.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from d3hr.config import Config, load_config, nest, parse_override
from d3hr.errors import D3HRError
from d3hr.utils.dist import check_device
from d3hr.utils.folders import claim
from d3hr.utils.io import atomic_path, read_json, write_json, write_text
from d3hr.utils.progress import say
from d3hr.utils.schema import COMPARE_RESULTS, check


@dataclass(frozen=True)
class Cell:
    method: str
    ipc: int
    seed: int
    sweep: tuple[str, Any] | None = None  # (config key, value)

    @property
    def name(self) -> str:
        tail = f"-{self.sweep[0].split('.')[-1]}{self.sweep[1]}" if self.sweep else ""
        return f"{self.method}-ipc{self.ipc}-seed{self.seed}{tail}"


def compare(base: Config, methods: Sequence[str], ipcs: Sequence[int], seeds: int, out: str | Path,
            labels: Sequence[str] = ("soft",), student: str = "convnet", epochs: int = 300,
            sweep: tuple[str, Sequence[Any]] | None = None, teacher_epochs: int | None = None) -> dict[str, Any]:
    """Distill and evaluate every cell; write OUT/results.json, OUT/results.md and OUT/accuracy.png.

    Distillation seed s is scored by student seed s, so the spread over seeds covers both the distillation (candidate
    draws, generation) and the student's training. ``sweep`` = (dotted config key, values) adds one row per value.
    """
    from d3hr import api
    from d3hr.evaluate import evaluate

    out = Path(out)
    check_grid(methods, ipcs, seeds, labels, student, epochs, sweep, teacher_epochs)
    check_device(base.device)
    sweeps = [(sweep[0], v) for v in sweep[1]] if sweep else [None]
    cells = [Cell(m, i, s, w) for w in sweeps for m in methods for i in ipcs for s in range(seeds)]
    configs = [_cell_config(base, cell, out) for cell in cells]  # every cell's config is valid before any work
    claim(out, "compare")
    rows = []
    for n, (cell, cfg) in enumerate(zip(cells, configs), 1):
        say(f"[compare] cell {n}/{len(cells)}: {cell.name}")
        api.distill(cfg)
        for mode in labels:
            res = evaluate(cfg.out, student=student, labels=mode, seeds=[cell.seed], epochs=epochs, device=cfg.device,
                           teacher_epochs=teacher_epochs)
            rec = res["records"][0]
            rows.append({"method": cell.method, "ipc": cell.ipc, "seed": cell.seed, "labels": mode,
                         "sweep": list(cell.sweep) if cell.sweep else None, "student": student, "epochs": epochs,
                         "top1": rec["top1"], "teacher": res.get("teacher"), "run": cfg.out})
    rows = merge_rows(_earlier_rows(out, base.data.name, student), rows)
    table = summarise(rows)
    result = {"dataset": base.data.name, "student": student, "seeds": seeds, "teacher_epochs": teacher_epochs,
              "cells": rows, "summary": table}
    write_json(out / "results.json", result)
    teacher = next((r["teacher"] for r in reversed(rows) if r.get("teacher")), None)
    write_text(out / "results.md", markdown_table(table, base.data.name, student) + full_data_line(teacher))
    plot_accuracy(table, out / "accuracy.png")
    return result


def check_grid(methods: Sequence[str], ipcs: Sequence[int], seeds: int, labels: Sequence[str], student: str,
               epochs: int, sweep: tuple[str, Sequence[Any]] | None = None, teacher_epochs: int | None = None) -> None:
    """Refuse a grid that cannot run to the end, with one line naming the value, before the first cell starts."""
    from d3hr.evaluate.runner import LABELS
    from d3hr.evaluate.students import check_student

    def positive(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    from d3hr.distill.methods import method_names

    known = method_names()
    checks = [
        (len(methods) >= 1, "--methods must name at least one method"),
        (all(m in known for m in methods),
         f"--methods: unknown method {next((m for m in methods if m not in known), '')!r}; known: {', '.join(known)}"),
        (len(set(methods)) == len(methods), f"--methods names a method twice: {', '.join(methods)}"),
        (len(ipcs) >= 1 and all(positive(i) for i in ipcs), f"--ipc must be integers >= 1, got {list(ipcs)}"),
        (len(set(ipcs)) == len(ipcs), f"--ipc names a value twice: {list(ipcs)}"),
        (positive(seeds), f"--seeds must be an integer >= 1, got {seeds!r}"),
        (len(labels) >= 1 and all(lab in LABELS for lab in labels), f"--labels must be soft, hard or soft,hard, got "
                                                                   f"{','.join(labels)!r}"),
        (len(set(labels)) == len(labels), f"--labels names a mode twice: {','.join(labels)}"),
        (positive(epochs), f"--epochs must be an integer >= 1, got {epochs!r}"),
        (teacher_epochs is None or positive(teacher_epochs),
         f"--teacher-epochs must be an integer >= 1, got {teacher_epochs!r}"),
        (sweep is None or len(sweep[1]) >= 1, "--sweep must give at least one value"),
        (sweep is None or len({repr(v) for v in sweep[1]}) == len(sweep[1]),
         f"--sweep names a value twice: {list(sweep[1]) if sweep else ''}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise D3HRError(msg)
    check_student(student)


def _cell_config(base: Config, cell: Cell, out: Path) -> Config:
    """The cell's run config: ``base`` with the cell's method, IPC, seed, sweep value and run folder (validated)."""
    items = [nest("select.method", cell.method), nest("select.ipc", cell.ipc), nest("seed", cell.seed),
             nest("out", str(out / "runs" / cell.name))]
    if cell.sweep:
        items.append(nest(*cell.sweep))
    return load_config(None, items, base=copy.deepcopy(base))


def _cell_key(r: dict[str, Any]) -> tuple:
    return (r["method"], r["ipc"], r["seed"], r["labels"], tuple(r["sweep"]) if r["sweep"] else None, r["student"],
            r["epochs"])


def _earlier_rows(out: Path, dataset: str, student: str) -> list[dict[str, Any]]:
    """Cells of earlier compares into the same OUT (same dataset and student), so that a grid can be run in parts."""
    path = out / "results.json"
    if not path.exists():
        return []
    old = check(read_json(path), COMPARE_RESULTS, path)
    if old.get("dataset") != dataset:
        return []
    return [r for r in old["cells"] if r["student"] == student]


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` cells not redone in ``new``, then ``new``: one row per (method, IPC, seed, labels, sweep, student,
    epochs)."""
    fresh = {_cell_key(r) for r in new}
    return [r for r in old if _cell_key(r) not in fresh] + list(new)


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """'key=v1,v2,...' (or a YAML list 'key=[v1, v2]') -> (key, [v1, v2, ...]), each value parsed as YAML."""
    key, value = parse_override(text)
    if isinstance(value, list):
        return key, value
    if isinstance(value, str) and "," in value:
        return key, [parse_override(f"{key}={v}")[1] for v in value.split(",") if v.strip()]
    return key, [value]


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std of top-1 (in %) over seeds, per method, IPC, label mode and sweep value."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        key = (r["method"], r["ipc"], r["labels"], tuple(r["sweep"]) if r["sweep"] else None, r["epochs"])
        groups.setdefault(key, []).append(100.0 * r["top1"])
    return [{"method": m, "ipc": i, "labels": lab, "sweep": list(w) if w else None, "epochs": e, "n": len(v),
             "mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
            for (m, i, lab, w, e), v in groups.items()]


def markdown_table(table: list[dict[str, Any]], dataset: str, student: str) -> str:
    """One row per method (and sweep value), one column per (labels, IPC, student epochs): mean +- std over seeds."""
    cols = sorted({(r["labels"], r["ipc"], r["epochs"]) for r in table})
    rows: dict[str, dict[tuple, str]] = {}
    for r in table:
        name = r["method"] + (f" ({r['sweep'][0]}={r['sweep'][1]})" if r["sweep"] else "")
        rows.setdefault(name, {})[(r["labels"], r["ipc"], r["epochs"])] = (f"{r['mean']:.1f} ± {r['std']:.1f} "
                                                                             f"(n={r['n']})")
    head = "| method | " + " | ".join(f"{lab} IPC {ipc} ({ep} ep)" for lab, ipc, ep in cols) + " |"
    lines = [f"Top-1 (%) on the real {dataset} test set, {student} student (epochs per column), mean ± std over "
             "distillation seeds (each scored by its own student seed).", "", head,
             "|" + "---|" * (len(cols) + 1)]
    lines += [f"| {name} | " + " | ".join(cells.get(c, "") for c in cols) + " |" for name, cells in rows.items()]
    return "\n".join(lines) + "\n"


def full_data_line(teacher: dict[str, Any] | None) -> str:
    """The upper bound: the soft-label teacher is the same architecture trained on the whole training set."""
    if not teacher or teacher.get("test_top1") is None:
        return ""
    return (f"\nFull training set (upper bound): {teacher.get('arch', '?')} trained on all "
            f"{teacher.get('train_images', '?')} images for {teacher.get('epochs', '?')} epochs (the soft-label "
            f"teacher): {100 * teacher['test_top1']:.1f}%.\n")


def plot_accuracy(table: list[dict[str, Any]], path: Path) -> None:
    """Accuracy vs IPC: one panel per label mode (soft first), one line per method and sweep value with the same
    colour in every panel, error bars = std over seeds; sweep rows dashed with open markers."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    modes = sorted({r["labels"] for r in table}, key=lambda m: (m != "soft", m))
    series: dict[str, dict[str, list[dict[str, Any]]]] = {}  # name -> labels -> points
    for r in table:
        name = r["method"] + (f" {r['sweep'][0].split('.')[-1]}={r['sweep'][1]}" if r["sweep"] else "")
        series.setdefault(name, {}).setdefault(r["labels"], []).append(r)
    palette = colormaps["tab10" if len(series) <= 10 else "tab20"]
    ipcs = sorted({r["ipc"] for r in table})
    fig = Figure(figsize=(4.2 * len(modes) + 2.2, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(modes), sharey=True, squeeze=False)[0]
    for ax, mode in zip(axes, modes):
        for k, (name, by_mode) in enumerate(series.items()):
            pts = sorted(by_mode.get(mode, []), key=lambda r: r["ipc"])
            if not pts:
                continue
            sweep = pts[0]["sweep"] is not None
            ax.errorbar([p["ipc"] for p in pts], [p["mean"] for p in pts], yerr=[p["std"] for p in pts],
                        marker="o", capsize=3, color=palette(k), label=name, linestyle="--" if sweep else "-",
                        markerfacecolor="none" if sweep else palette(k))
        ax.set_xscale("log")
        ax.set_xticks(ipcs, [str(i) for i in ipcs])
        ax.minorticks_off()
        ax.set_title(f"{mode} labels")
        ax.set_xlabel("images per class")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 (%)")
    handles = {h.get_label(): h for ax in axes for h in ax.get_legend_handles_labels()[0]}
    fig.legend(list(handles.values()), list(handles), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def load_results(out: str | Path) -> dict[str, Any]:
    """OUT/results.json of a finished compare."""
    path = Path(out) / "results.json"
    return check(read_json(path), COMPARE_RESULTS, path)
