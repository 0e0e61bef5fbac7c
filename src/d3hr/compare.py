"""A grid of methods x IPC x distillation seeds (x an optional config sweep), each cell distilled and evaluated.

Every cell is an ordinary run folder under OUT/runs/, so an interrupted compare resumes: finished stages and finished
evaluation records are skipped. The generator, the inversion statistics and the teacher are shared by all cells that
can share them (generator cache, statistics cache, RUN/../.teachers).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from d3hr.config import Config, load_config, nest, parse_override
from d3hr.utils.io import atomic_path, read_json, write_json, write_text
from d3hr.utils.progress import say


@dataclass(frozen=True)
class Cell:
    method: str
    ipc: int
    seed: int
    sweep: tuple[str, Any] | None = None  # (config key, value)

    @property
    def name(self) -> str:
        tail = f"-{self.sweep[0].split('.')[-1]}{self.sweep[1]}" if self.sweep else ""
        return f"{self.method}-ipc{self.ipc}-seed{self.seed}{tail}"  # siblings: they share RUN/../.teachers


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
    sweeps = [(sweep[0], v) for v in sweep[1]] if sweep else [None]
    cells = [Cell(m, i, s, w) for w in sweeps for m in methods for i in ipcs for s in range(seeds)]
    rows = []
    for n, cell in enumerate(cells, 1):
        say(f"[compare] cell {n}/{len(cells)}: {cell.name}")
        items = [nest("select.method", cell.method), nest("select.ipc", cell.ipc), nest("seed", cell.seed),
                 nest("out", str(out / "runs" / cell.name))]
        if cell.sweep:
            items.append(nest(*cell.sweep))
        cfg = load_config(None, items, base=copy.deepcopy(base))
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


def _cell_key(r: dict[str, Any]) -> tuple:
    return (r["method"], r["ipc"], r["seed"], r["labels"], tuple(r["sweep"]) if r["sweep"] else None, r["student"],
            r["epochs"])


def _earlier_rows(out: Path, dataset: str, student: str) -> list[dict[str, Any]]:
    """Cells of earlier compares into the same OUT (same dataset and student), so that a grid can be run in parts."""
    path = out / "results.json"
    if not path.exists():
        return []
    old = read_json(path)
    if old.get("dataset") != dataset:
        return []
    return [r for r in old.get("cells", []) if r.get("student") == student]


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
    return read_json(Path(out) / "results.json")
