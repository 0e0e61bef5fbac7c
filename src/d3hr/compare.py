"""A grid of methods x IPC x distillation seeds (x an optional config sweep), each cell distilled and evaluated under
one or more named training recipes, plus the full-data upper bound and the statistics a reviewer asks for.

Every cell is an ordinary run folder under OUT/runs/, so an interrupted compare resumes: finished stages and finished
evaluation records are skipped. The generator, the inversion statistics and the teacher are shared by all cells that
can share them (generator, statistics and teacher caches). The whole grid is checked before the
first cell starts. A recipe fixes the training length, so every
IPC of one invocation is trained for the same epochs (stated in each column header).

Beside mean +- std: paired differences per seed with a 95% t-interval (D3HR against Base-RS, which shares its
candidate pools and seeds, and against random real; every swept row against its method's default), and
DD-Ranking's HLR, IOR, LRS and ARS (d3hr.evaluation.metrics) against random real subsets trained under the same
labels and recipe. With ``set_metrics``, also each cell's set quality (``d3hr metrics``: FID, precision / recall /
density / coverage, diversity in the evaluation teacher's features), mean +- std over seeds, and how well each
readout tracks accuracy over the cells (Spearman's rho with a 95% interval).
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
from d3hr.evaluation.metrics import ars, hlr, ior, lrs, paired_t_interval, spearman_interval
from d3hr.evaluation.recipes import DEFAULT_RECIPE, FULL_RECIPE, get_recipe
from d3hr.evaluation.results import file_lock
from d3hr.utils.dist import check_device
from d3hr.utils.folders import claim
from d3hr.utils.io import atomic_path, read_json, write_json, write_text
from d3hr.utils.progress import say
from d3hr.utils.schema import COMPARE_RESULTS, check

FULL = "full"  # the upper bound: the student on the whole training set with the hard-label recipe
RANDOM = "random-real"  # DD-Ranking's reference: random real subsets of the same size
PAIRED = (("d3hr", "base-rs"), ("d3hr", "random-real"),  # compared seed by seed (see paired_differences)
          ("d3hr-herd", "d3hr"), ("d3hr-herd", "random-real"), ("d3hr-herd", "herding"))
QUALITY = ("fid", "precision", "recall", "density", "coverage", "diversity", "real_diversity")  # overall readouts
SET_READOUTS = QUALITY[:-1]  # those that describe the set (real_diversity describes the real images)


@dataclass(frozen=True)
class Cell:
    method: str
    ipc: int
    seed: int
    sweep: tuple[str, Any] | None = None  # (config key, value)

    @property
    def name(self) -> str:
        tail = f"-{self.sweep[0].split('.')[-1]}{self.sweep[1]}" if self.sweep else ""
        return f"{self.method}-ipc{self.ipc}-seed{self.seed}{tail}"  # siblings: they share the teacher cache


def seed_list(seeds: int | Sequence[int]) -> list[int]:
    """Seeds 0..N-1 for an int N, else the seeds given (a grid in parts: seeds 3 and 4 after 0..2 elsewhere)."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        return list(range(seeds))
    return list(seeds)


def compare(base: Config, methods: Sequence[str], ipcs: Sequence[int], seeds: int | Sequence[int], out: str | Path,
            labels: Sequence[str] = ("soft",), student: str = "convnet", epochs: int | None = None,
            sweep: tuple[str, Sequence[Any]] | None = None, teacher_epochs: int | None = None,
            recipes: Sequence[str] | None = None, ars_runs: bool = False,
            full_seeds: int | Sequence[int] | None = None, full_epochs: int | None = None,
            set_metrics: bool = False) -> dict[str, Any]:
    """Distill and evaluate every cell; write OUT/results.json, OUT/results.md and OUT/accuracy.png.

    ``seeds``: N for seeds 0..N-1, or a list of seeds; with the rows of earlier compares into the same OUT (its
    results.json) kept, a grid can be run in parts, on different machines. Distillation seed s is scored by student
    seed s, so the spread over seeds covers both the distillation (candidate
    draws, generation) and the student's training. ``recipes``: training recipes by name (default: 'rded' for soft
    and 'dc' for hard ``labels``); ``epochs`` overrides every recipe's epochs, the same at every IPC. ``ars_runs``
    also trains each cell without augmentation (DD-Ranking's ARS). Method 'full' trains the student on the whole
    training set with the 'dc-full' recipe (``full_epochs`` overrides it) for ``full_seeds`` seeds (default
    ``seeds``). ``sweep`` = (dotted config key, values) adds one row per value. ``set_metrics`` also computes each
    cell's set quality (d3hr.evaluation.set_quality, in the features of the soft-label teacher: trained if no recipe
    needed it) and adds its table; off by default, so that a compare costs what it did.
    """
    from d3hr import api
    from d3hr.evaluation import evaluate

    out = Path(out)
    check_grid(methods, ipcs, seeds, labels, student, epochs, sweep, teacher_epochs)
    if full_seeds is not None:
        check_seeds(full_seeds, "--full-seeds")
    seeds = seed_list(seeds)
    check_device(base.device)
    _earlier_rows(out, base.data.name, student)  # refuses an OUT of another dataset before any work
    names = list(recipes) if recipes else [DEFAULT_RECIPE[mode] for mode in labels]
    units = [(get_recipe(n, epochs=epochs), aug) for n in names for aug in ((True, False) if ars_runs else (True,))]
    sweeps = [(sweep[0], v) for v in sweep[1]] if sweep else [None]
    cells = [Cell(m, i, s, w) for w in sweeps for m in methods if m != FULL for i in ipcs for s in seeds]
    configs = [_cell_config(base, cell, out, teacher_epochs) for cell in cells]  # all valid before any work
    claim(out, "compare")
    rows, quality = [], []
    for n, (cell, cfg) in enumerate(zip(cells, configs), 1):
        say(f"[compare] cell {n}/{len(cells)}: {cell.name}")
        api.distill(cfg)
        for rcp, aug in units:
            res = evaluate(cfg.out, student=student, labels=rcp.labels, seeds=[cell.seed], epochs=rcp.epochs,
                           device=cfg.device, teacher_epochs=teacher_epochs, recipe=rcp.name, augment=aug)
            rows.append(_row(cell.method, cell.ipc, cell.seed, cell.sweep, student, res, cfg.out))
        if set_metrics:
            from d3hr.evaluation.set_quality import metrics

            quality.append(_quality_row(cell, metrics(cfg.out, teacher_epochs=teacher_epochs, device=cfg.device),
                                        cfg.out))
    if FULL in methods:
        for s in (seeds if full_seeds is None else seed_list(full_seeds)):
            say(f"[compare] full training set, seed {s}")
            cfg = load_config(None, [nest("out", str(out / "runs" / f"{FULL}-seed{s}"))], base=copy.deepcopy(base))
            if not (Path(cfg.out) / "config.yaml").is_file():
                claim(cfg.out, "run")
                write_text(Path(cfg.out) / "config.yaml", cfg.to_yaml())
            res = evaluate(cfg.out, student=student, labels="hard", seeds=[s], epochs=full_epochs, device=cfg.device,
                           recipe=FULL_RECIPE, full=True)
            rows.append(_row(FULL, None, s, None, student, res, cfg.out))
    with file_lock(out / ".compare.lock"):  # another compare into OUT (a part run at once) may have written since
        earlier, kept = _earlier_rows(out, base.data.name, student)
        rows = merge_rows(earlier, rows)
        quality = merge_quality(_earlier_quality(out, base.data.name), quality)
        return write_results(out, base.data.name, student, teacher_epochs, rows, kept, quality)


def write_results(out: Path, dataset: str, student: str, teacher_epochs: int | None, rows: list[dict[str, Any]],
                  kept: list[dict[str, Any]], quality: list[dict[str, Any]]) -> dict[str, Any]:
    """The statistics of ``rows`` (one student's cells; ``kept``: other students' cells, stored as they are) and of
    the set-quality cells, written to OUT/results.json, OUT/results.md and OUT/accuracy.png."""
    table = summarise(rows)
    result = {"dataset": dataset, "student": student, "seeds": sorted({r["seed"] for r in rows}),
              "teacher_epochs": teacher_epochs,
              "recipes": {r["recipe"]: r["setup"] for r in rows}, "cells": kept + rows, "summary": table,
              "paired": paired_differences(rows), "scores": robust_scores(rows)}
    if quality:
        generated = generated_methods(rows)  # a scope of its own only when real-image methods are in the grid too
        result["set_metrics"] = {"cells": quality, "summary": summarise_quality(quality),
                                 "accuracy": quality_vs_accuracy(rows, quality) + (
                                     quality_vs_accuracy(rows, quality, generated, "generated")
                                     if generated != {r["method"] for r in rows} - {FULL} else [])}
    write_json(out / "results.json", result)
    teacher = next((r["teacher"] for r in reversed(rows) if r.get("teacher")), None)
    mixed = models_line(rows)
    if mixed:
        say(f"[compare] warning: {' '.join(mixed.split())}")
    write_text(out / "results.md", markdown_table(table, dataset, student) + full_data_line(table, teacher) + mixed
               + paired_table(result["paired"]) + scores_table(result["scores"])
               + quality_table(result.get("set_metrics", {}).get("summary", []))
               + tracking_table(result.get("set_metrics", {}).get("accuracy", [])))
    plot_accuracy([r for r in table if r["method"] != FULL], out / "accuracy.png")
    return result


def refresh_results(out: str | Path) -> dict[str, Any]:
    """Recompute OUT's statistics and tables from the cells its results.json holds (no training): for a grid whose
    parts were run by different versions of d3hr."""
    out = Path(out)
    old = load_results(out)
    rows, kept = _split_cells(old["cells"], old["student"])
    return write_results(out, old["dataset"], old["student"], old.get("teacher_epochs"), rows, kept,
                         old.get("set_metrics", {}).get("cells", []))


def check_seeds(seeds: int | Sequence[int], flag: str) -> None:
    """A count >= 1, or a non-empty list of distinct seeds >= 0; else one line naming ``flag``."""
    if isinstance(seeds, bool) or not isinstance(seeds, (int, list, tuple)):
        raise D3HRError(f"{flag} must be a count or a list of seeds, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise D3HRError(f"{flag} must be an integer >= 1, got {seeds!r}")
        return
    ok = (len(seeds) >= 1 and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds))
    if not ok:
        raise D3HRError(f"{flag} must list seeds >= 0, got {list(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise D3HRError(f"{flag} names a seed twice: {list(seeds)}")


def check_grid(methods: Sequence[str], ipcs: Sequence[int], seeds: int | Sequence[int], labels: Sequence[str],
               student: str, epochs: int | None, sweep: tuple[str, Sequence[Any]] | None = None,
               teacher_epochs: int | None = None) -> None:
    """Refuse a grid that cannot run to the end, with one line naming the value, before the first cell starts."""
    from d3hr.evaluation.runner import LABELS
    from d3hr.evaluation.students import check_student

    def positive(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    from d3hr.distillation.methods import method_names

    known = [*method_names(), FULL]
    checks = [
        (len(methods) >= 1, "--methods must name at least one method"),
        (all(m in known for m in methods),
         f"--methods: unknown method {next((m for m in methods if m not in known), '')!r}; known: {', '.join(known)}"),
        (len(set(methods)) == len(methods), f"--methods names a method twice: {', '.join(methods)}"),
        (len(ipcs) >= 1 and all(positive(i) for i in ipcs), f"--ipc must be integers >= 1, got {list(ipcs)}"),
        (len(set(ipcs)) == len(ipcs), f"--ipc names a value twice: {list(ipcs)}"),
        (len(labels) >= 1 and all(lab in LABELS for lab in labels), f"--labels must be soft, hard or soft,hard, got "
                                                                   f"{','.join(labels)!r}"),
        (len(set(labels)) == len(labels), f"--labels names a mode twice: {','.join(labels)}"),
        (epochs is None or positive(epochs), f"--epochs must be an integer >= 1, got {epochs!r}"),
        (teacher_epochs is None or positive(teacher_epochs),
         f"--teacher-epochs must be an integer >= 1, got {teacher_epochs!r}"),
        (sweep is None or len(sweep[1]) >= 1, "--sweep must give at least one value"),
        (sweep is None or len({repr(v) for v in sweep[1]}) == len(sweep[1]),
         f"--sweep names a value twice: {list(sweep[1]) if sweep else ''}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise D3HRError(msg)
    check_seeds(seeds, "--seeds")
    check_student(student)


def _cell_config(base: Config, cell: Cell, out: Path, teacher_epochs: int | None = None) -> Config:
    """The cell's run config: ``base`` with the cell's method, IPC, seed, sweep value and run folder (validated);
    with ``teacher_epochs``, methods that select with the teacher (herding) take the soft labels' teacher."""
    items = [nest("select.method", cell.method), nest("select.ipc", cell.ipc), nest("seed", cell.seed),
             nest("out", str(out / "runs" / cell.name))]
    if teacher_epochs is not None:
        items.append(nest("select.teacher_epochs", teacher_epochs))
    if cell.sweep:
        items.append(nest(*cell.sweep))
    return load_config(None, items, base=copy.deepcopy(base))


def _row(method: str, ipc: int | None, seed: int, sweep: tuple[str, Any] | None, student: str,
         res: dict[str, Any], run: str) -> dict[str, Any]:
    rec = res["records"][0]
    return {"method": method, "ipc": ipc, "seed": seed, "labels": rec["labels"], "recipe": rec["recipe"],
            "setup": rec["setup"], "sweep": list(sweep) if sweep else None, "student": student,
            "epochs": rec["epochs"], "top1": rec["top1"], "teacher": res.get("teacher"),
            "teacher_sha256": rec.get("teacher_sha256"), "images_sha256": rec.get("images_sha256"),
            "kernels": rec.get("kernels"), "generator_sha256": rec.get("generator_sha256"),
            "selection_teacher_sha256": rec.get("selection_teacher_sha256"), "run": run}


def _cell_key(r: dict[str, Any]) -> tuple:
    return (r["method"], r["ipc"], r["seed"], r["recipe"], tuple(r["sweep"]) if r["sweep"] else None, r["student"],
            r["epochs"])


def _earlier_rows(out: Path, dataset: str, student: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The cells of earlier compares into the same OUT, so that a grid can be run in parts: (those of this student,
    trained under a named recipe: they join this compare's statistics; the others: other students, or rows from
    before recipes existed, kept in results.json untouched). An OUT holding another dataset's compare is refused."""
    path = out / "results.json"
    if not path.exists():
        return [], []
    old = check(read_json(path), COMPARE_RESULTS, path)
    if old.get("dataset", dataset) != dataset:
        raise D3HRError(f"{out} holds a compare of dataset '{old['dataset']}' ({path}), not '{dataset}'; give "
                        "another --out")
    return _split_cells(old.get("cells", []), student)


def _split_cells(cells: list[dict[str, Any]], student: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the cells of ``student`` trained under a named recipe, the others)."""
    same = [r for r in cells if r.get("student") == student and "recipe" in r]
    return same, [r for r in cells if not (r.get("student") == student and "recipe" in r)]


def _quality_row(cell: Cell, res: dict[str, Any], run: str) -> dict[str, Any]:
    """One cell's overall set quality (RUN/eval/metrics.json), with what it was computed in and from."""
    return {"method": cell.method, "ipc": cell.ipc, "seed": cell.seed,
            "sweep": list(cell.sweep) if cell.sweep else None, "run": run, "features_sha256": res["features"]["sha256"],
            "k": res["k"], "n_real": res["overall"]["n_real"], **{q: res["overall"][q] for q in QUALITY}}


def _quality_key(r: dict[str, Any]) -> tuple:
    return (r["method"], r["ipc"], r["seed"], tuple(r["sweep"]) if r["sweep"] else None)


def _earlier_quality(out: Path, dataset: str) -> list[dict[str, Any]]:
    """Set-quality cells of earlier compares into the same OUT (same dataset)."""
    path = out / "results.json"
    if not path.exists():
        return []
    old = check(read_json(path), COMPARE_RESULTS, path)
    return old.get("set_metrics", {}).get("cells", []) if old.get("dataset") == dataset else []


def merge_quality(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` set-quality cells not redone in ``new``, then ``new``: one per (method, IPC, seed, sweep)."""
    fresh = {_quality_key(r) for r in new}
    return [r for r in old if _quality_key(r) not in fresh] + list(new)


def summarise_quality(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds of each overall readout, per method, IPC and sweep value (None: no seed had
    it)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in cells:
        groups.setdefault((r["method"], r["ipc"], tuple(r["sweep"]) if r["sweep"] else None), []).append(r)
    out = []
    for (m, i, w), rs in groups.items():
        entry: dict[str, Any] = {"method": m, "ipc": i, "sweep": list(w) if w else None, "n": len(rs),
                                 "seeds": [r["seed"] for r in rs], "k": rs[0]["k"]}
        for q in QUALITY:
            values = [r[q] for r in rs if r[q] is not None]
            entry[q] = _stat(values) if values else None
        out.append(entry)
    return sorted(out, key=lambda e: (e["ipc"], e["method"], str(e["sweep"])))


def quality_table(summary: list[dict[str, Any]]) -> str:
    """The set-quality table (d3hr metrics, overall readouts): one row per method, IPC and sweep value."""
    if not summary:
        return ""

    def fmt(v: dict[str, float] | None, spec: str) -> str:  # FID and distances: in the features' own scale
        return f"{v['mean']:{spec}} ± {v['std']:{'.2g' if spec == '.4g' else spec}}" if v else ""

    lines = ["", f"Set quality (d3hr metrics; k = {summary[0]['k']}) in the soft-label teacher's penultimate features "
             "against the real training images, mean ± std over seeds; FID depends on the set's size: compare it "
             "within an IPC. diversity: mean pairwise distance within a class (real: of the real images).", "",
             "| method | IPC | FID | precision | recall | density | coverage | diversity | real diversity | n |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in summary:
        name = _named(e["method"], e["sweep"])
        lines.append(f"| {name} | {e['ipc']} | {fmt(e['fid'], '.4g')} | {fmt(e['precision'], '.3f')} | "
                     f"{fmt(e['recall'], '.3f')} | {fmt(e['density'], '.3f')} | {fmt(e['coverage'], '.3f')} | "
                     f"{fmt(e['diversity'], '.4g')} | {fmt(e['real_diversity'], '.4g')} | {e['n']} |")
    return "\n".join(lines) + "\n"


def generated_methods(rows: list[dict[str, Any]]) -> set[str]:
    """The methods among ``rows`` whose images the generator's decoder made (every registered method but those that
    select real images)."""
    from d3hr.distillation.methods import get_method, method_names

    known = set(method_names())  # a results.json may name a method this version does not have
    return {m for m in {r["method"] for r in rows} if m in known and get_method(m).level != "images"}


def quality_vs_accuracy(rows: list[dict[str, Any]], quality: list[dict[str, Any]], methods: set[str] | None = None,
                        scope: str = "all") -> list[dict[str, Any]]:
    """Does a set-quality readout track accuracy? Per (IPC, recipe, epochs) and readout: Spearman's rho between the
    readout and top-1 over every cell that has both (matched on method, seed and sweep value; the cells of
    ``methods``, default all, named ``scope``; groups of fewer than 4 cells are left out), with its 95% interval
    (d3hr.evaluation.metrics.spearman_interval; None where undefined). A readout that explains accuracy shows
    rho < 0 for FID (lower is better) and rho > 0 for the others. With several seeds per method, rho mixes the
    differences between methods and the spread within one; both are what a readout would have to predict."""
    by_key = {_quality_key(q): q for q in quality}
    groups: dict[tuple, list[tuple[float, dict[str, Any]]]] = {}
    for r in rows:
        key = _quality_key(r)  # a quality cell's key: method, IPC, seed and sweep value
        if r["method"] != FULL and key in by_key and (methods is None or r["method"] in methods):
            groups.setdefault((r["ipc"], r["recipe"], r["epochs"]), []).append((r["top1"], by_key[key]))
    out = []
    for (ipc, recipe, epochs), pairs in sorted(groups.items(), key=str):
        if len(pairs) < 4:  # too few cells for a rank correlation (an interval needs n > 3)
            continue
        entry: dict[str, Any] = {"scope": scope, "ipc": ipc, "recipe": recipe, "epochs": epochs, "cells": len(pairs),
                                 "methods": sorted({q["method"] for _, q in pairs})}
        for name in SET_READOUTS:
            known = [(top1, q[name]) for top1, q in pairs if q[name] is not None]
            c = spearman_interval([v for _, v in known], [t for t, _ in known]) if known else None
            entry[name] = None if c is None else {"rho": c.rho, "low": c.low, "high": c.high, "n": c.n,
                                                  "significant": c.significant}
        out.append(entry)
    return out


def tracking_table(tracking: list[dict[str, Any]]) -> str:
    """Spearman's rho of each set-quality readout against top-1 ('*': the 95% interval excludes 0)."""
    if not tracking:
        return ""

    def fmt(c: dict[str, Any] | None) -> str:
        return f"{c['rho']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]{' *' if c['significant'] else ''}" if c else ""

    lines = ["", "Does set quality track accuracy? Spearman's rho between each readout and top-1 over the cells "
             "(all: every method and seed with both; generated: those of methods whose images the generator made), "
             "[95% interval, Fisher z with variance 1.06 / (n - 3)]; * = the interval excludes 0. FID should fall as "
             "accuracy rises (rho < 0), the others rise.", "",
             "| cells of | recipe | IPC | epochs | FID | precision | recall | density | coverage | diversity | cells |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in tracking:
        lines.append(f"| {e['scope']} | {e['recipe']} | {e['ipc']} | {e['epochs']} | "
                     + " | ".join(fmt(e[name]) for name in SET_READOUTS) + f" | {e['cells']} |")
    return "\n".join(lines) + "\n"


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` cells not redone in ``new``, then ``new``: one row per (method, IPC, seed, recipe, sweep, student,
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


def _group(r: dict[str, Any]) -> tuple:
    return (r["ipc"], r["recipe"], tuple(r["sweep"]) if r["sweep"] else None, r["epochs"])


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std of top-1 (in %) over seeds, per method, IPC, recipe, sweep value and epochs."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], *_group(r)), []).append(r)
    out = []
    for (m, i, rcp, w, e), rs in groups.items():
        v = [100.0 * r["top1"] for r in rs]
        out.append({"method": m, "ipc": i, "recipe": rcp, "labels": rs[0]["labels"], "sweep": list(w) if w else None,
                    "epochs": e, "n": len(v), "seeds": [r["seed"] for r in rs], "mean": float(np.mean(v)),
                    "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0})
    return out


def _by_seed(rows: list[dict[str, Any]], method: str, group: tuple) -> dict[int, float]:
    return {r["seed"]: r["top1"] for r in rows if r["method"] == method and _group(r) == group}


def paired_differences(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-seed differences of top-1 (points) with a 95% t-interval of their mean; ``significant`` only when it
    excludes 0. Pairs, each within one (IPC, recipe, epochs): the methods of ``PAIRED`` under the same sweep value
    (D3HR and Base-RS share candidate pools and seeds; D3HR and random real share the student's seed; d3hr-herd is
    set against D3HR, random real and herding, the baseline that selects with the same teacher), and every
    swept row against the same method without a sweep (e.g. ``stats.covariance=full`` against the default ``diag``,
    same seeds and candidate draws), against random real and against the method's partners above, all without a
    sweep (so d3hr-herd with ``lowrank:16`` also meets the paper's D3HR and herding)."""
    groups = sorted({(r["method"], _group(r)) for r in rows}, key=str)
    pairs = [((a, g), (b, g)) for a, b in PAIRED for m, g in groups if m == a]
    pairs += [((m, g), (b, (g[0], g[1], None, g[3]))) for m, g in groups if g[2] is not None
              for b in dict.fromkeys((m, RANDOM, *(b for a, b in PAIRED if a == m)))]
    out = []
    for (a, ga), (b, gb) in pairs:
        va, vb = _by_seed(rows, a, ga), _by_seed(rows, b, gb)
        ma, mb = _models_by_seed(rows, a, ga), _models_by_seed(rows, b, gb)
        both = sorted(set(va) & set(vb))
        common = [s for s in both if same_models(ma[s], mb[s])]
        if not common:
            continue
        iv = paired_t_interval([100 * va[s] for s in common], [100 * vb[s] for s in common])
        out.append({"a": a, "b": b, "ipc": ga[0], "recipe": ga[1], "sweep": list(ga[2] or []) or None,
                    "sweep_b": list(gb[2] or []) or None, "epochs": ga[3], "seeds": common, "mean": iv.mean,
                    "low": iv.low, "high": iv.high, "n": iv.n, "significant": iv.significant,
                    "left_out": [s for s in both if s not in common]})
    return out


UNRECORDED = "unrecorded"  # a cell of a version before these weights were recorded
MODELS = ("soft-label teacher", "generator", "selecting teacher")  # what cell_models returns, in order


def _method(name: str) -> Any:
    from d3hr.distillation.methods import METHODS, method_names

    return METHODS[name] if name in method_names() else None  # a results.json may name a method this version lacks


def cell_models(r: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """The weights a cell's number rests on besides its own student, as sha256s (MODELS): the teacher of its soft
    labels (None under hard labels), the generator of its images (None for real images) and the teacher its
    selection herded on (herding, d3hr-herd: methods whose key hashes more than the config; None for others).
    UNRECORDED where a row of an older version lacks a weight its method has."""
    method = _method(r["method"])
    gen = r.get("generator_sha256") or (UNRECORDED if method is not None and method.needs_generator else None)
    sel = r.get("selection_teacher_sha256") or (
        UNRECORDED if method is not None and method.key_inputs is not None else None)
    return r.get("teacher_sha256"), gen, sel


def _models_by_seed(rows: list[dict[str, Any]], method: str, group: tuple) -> dict[int, tuple]:
    return {r["seed"]: cell_models(r) for r in rows if r["method"] == method and _group(r) == group}


def same_models(a: tuple, b: tuple) -> bool:
    """Whether two cells of a pair rest on the same weights (cell_models): each sha256 equal, or absent on one side
    (a real-image method has no generator, hard labels no teacher). Two unrecorded ones count as the same (the cells
    of one older grid shared its caches); unrecorded against a recorded one does not."""
    return all(x is None or y is None or x == y for x, y in zip(a, b, strict=True))


def robust_scores(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """DD-Ranking's HLR, IOR and LRS per method, IPC and recipe (LRS needs the full-data row and the method's
    hard-label cells under the default hard recipe), and ARS where the same cells also ran without augmentation;
    per seed against random real subsets of the same seed, then mean and std over seeds (scores as fractions)."""
    full = [r["top1"] for r in rows if r["method"] == FULL]
    real_hard = float(np.mean(full)) if full else None
    hard = DEFAULT_RECIPE["hard"]
    out = []
    for r0 in summarise([r for r in rows if r["method"] != FULL and not r["recipe"].endswith("-noaug")]):
        group = (r0["ipc"], r0["recipe"], tuple(r0["sweep"]) if r0["sweep"] else None, r0["epochs"])
        syn, rdm = _by_seed(rows, r0["method"], group), _by_seed(rows, RANDOM, group)
        ms, mr = _models_by_seed(rows, r0["method"], group), _models_by_seed(rows, RANDOM, group)
        seeds = sorted(s for s in set(syn) & set(rdm) if same_models(ms[s], mr[s]))
        if not seeds:
            continue
        entry: dict[str, Any] = {"method": r0["method"], "ipc": r0["ipc"], "recipe": r0["recipe"],
                                 "sweep": r0["sweep"], "epochs": r0["epochs"], "seeds": seeds,
                                 "ior": _stat([ior(syn[s], rdm[s]) for s in seeds])}
        syn_hard = {r["seed"]: r["top1"] for r in rows if r["method"] == r0["method"] and r["ipc"] == r0["ipc"]
                    and r["recipe"] == hard and r["sweep"] == r0["sweep"]}
        hs = [s for s in seeds if s in syn_hard]
        if real_hard is not None and hs:
            entry["hlr"] = _stat([hlr(real_hard, syn_hard[s]) for s in hs])
            entry["lrs"] = _stat([lrs(real_hard, syn_hard[s], syn[s], rdm[s]) for s in hs])
        naug = (r0["ipc"], f"{r0['recipe']}-noaug", group[2], r0["epochs"])
        syn_n, rdm_n = _by_seed(rows, r0["method"], naug), _by_seed(rows, RANDOM, naug)
        ns = [s for s in seeds if s in syn_n and s in rdm_n]
        if ns:
            entry["ars"] = _stat([ars(syn[s], rdm[s], syn_n[s], rdm_n[s]) for s in ns])
        out.append(entry)
    return out


def _stat(v: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}


def _column(recipe: str, labels: str, ipc: int, epochs: int) -> str:
    return f"{labels} ({recipe}) IPC {ipc} ({epochs} ep)"


def markdown_table(table: list[dict[str, Any]], dataset: str, student: str) -> str:
    """One row per method (and sweep value), one column per (recipe, IPC, epochs): mean +- std over seeds."""
    table = [r for r in table if r["method"] != FULL]
    cols = sorted({(r["recipe"], r["labels"], r["ipc"], r["epochs"]) for r in table},
                  key=lambda c: (c[1] != "soft", c[0], c[2]))
    rows: dict[str, dict[tuple, str]] = {}
    for r in table:
        name = _named(r["method"], r["sweep"])
        rows.setdefault(name, {})[(r["recipe"], r["labels"], r["ipc"], r["epochs"])] = (
            f"{r['mean']:.1f} ± {r['std']:.1f} (n={r['n']})")
    head = "| method | " + " | ".join(_column(*c) for c in cols) + " |"
    lines = [f"Top-1 (%) on the real {dataset} test set, {student} student, training recipe and epochs per column "
             "(the same at every IPC), mean ± std over distillation seeds (each scored by its own student seed).", "",
             head, "|" + "---|" * (len(cols) + 1)]
    lines += [f"| {name} | " + " | ".join(cells.get(c, "") for c in cols) + " |" for name, cells in rows.items()]
    return "\n".join(lines) + "\n"


def full_data_line(table: list[dict[str, Any]], teacher: dict[str, Any] | None) -> str:
    """The upper bound (a student on the whole training set, hard-label recipe) and the soft-label teacher."""
    text = ""
    for r in table:
        if r["method"] == FULL:
            text += (f"\nFull training set (upper bound): the student trained on all training images with recipe "
                     f"{r['recipe']} ({r['epochs']} epochs): {r['mean']:.1f} ± {r['std']:.1f}% (n={r['n']}).\n")
    if teacher and teacher.get("test_top1") is not None:
        text += (f"\nSoft-label teacher: {teacher.get('arch', '?')}, recipe {teacher.get('recipe', '?')}, "
                 f"{teacher.get('epochs', '?')} epochs on {teacher.get('train_images', '?')} images, "
                 f"{100 * teacher['test_top1']:.1f}% test top-1, weights sha256 {str(teacher.get('sha256'))[:12]}.\n")
    return text


def models_line(rows: list[dict[str, Any]]) -> str:
    """Warnings when the cells rest on more than one teacher or generator (cell_models), by IPC:
    within an IPC their paired differences would mix weights, so pairs whose cells name different weights are left
    out of them (the paired table says which seeds); across IPCs the columns were made with different weights (a grid
    run in parts where a cache was rebuilt, e.g. on a machine that rounds differently). Empty when one of each.
    Cells of versions before a weight was recorded count as one 'unrecorded' set of weights."""
    lines = []
    for index, what in enumerate(MODELS):
        by_ipc: dict[Any, dict[str, int]] = {}
        for r in rows:
            sha = cell_models(r)[index]
            if sha:
                counts = by_ipc.setdefault(r["ipc"], {})
                counts[sha] = counts.get(sha, 0) + 1
        shas = {sha for counts in by_ipc.values() for sha in counts}
        if len(shas) < 2:
            continue
        lines.append(f"The cells name {len(shas)} different {what}s: columns made with different weights compare "
                     "less directly.")
        for ipc, counts in sorted(by_ipc.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
            named = "; ".join(f"{sha[:12]}: {n} cell{'s' * (n > 1)}"
                              for sha, n in sorted(counts.items(), key=lambda kv: -kv[1]))
            where = "the full-data row" if ipc is None else f"IPC {ipc}"
            if len(counts) > 1:
                lines.append(f"The {where} cells name {len(counts)} different {what}s (weights sha256 {named}): "
                             f"their means mix {what}s, and pairs of cells on different {what}s are left out of the "
                             "paired differences.")
            else:
                lines.append(f"The {where} cells name the {what} {named}.")
    return "".join(f"\n{line}\n" for line in lines)


def paired_table(paired: list[dict[str, Any]]) -> str:
    """Paired differences (points) with 95% t-intervals; '*' marks an interval that excludes 0."""
    if not paired:
        return ""
    lines = ["", "Paired differences per seed (the same seed: the same student initialisation and data order; D3HR "
             "and Base-RS also draw from the same candidate pools), top-1 points, mean [95% t-interval]; * = the "
             "interval excludes 0.", "", "| difference | recipe | IPC | epochs | mean [95% CI] | n |",
             "|---|---|---|---|---|---|"]
    for p in paired:
        mark = " *" if p["significant"] else ""
        name = f"{_named(p['a'], p['sweep'])} − {_named(p['b'], p['sweep_b'])}"
        lines.append(f"| {name} | {p['recipe']} | {p['ipc']} | {p['epochs']} | {p['mean']:+.2f} "
                     f"[{p['low']:+.2f}, {p['high']:+.2f}]{mark} | {p['n']}{_left_out(p)} |")
    return "\n".join(lines) + "\n"


def _left_out(p: dict[str, Any]) -> str:
    """The seeds of a pair left out because its two cells rest on different teacher or generator weights."""
    seeds = p.get("left_out") or []
    return f" (seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))} left out: other weights)" if seeds else ""


def _named(method: str, sweep: list[Any] | None) -> str:
    """A table's row name: the method, and its sweep value when it has one."""
    return method + (f" ({sweep[0]}={sweep[1]})" if sweep else "")


def scores_table(scores: list[dict[str, Any]]) -> str:
    """DD-Ranking's HLR, IOR, LRS and ARS (in %, mean ± std over seeds)."""
    if not scores:
        return ""

    def fmt(entry: dict[str, Any], key: str) -> str:
        v = entry.get(key)
        return f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}" if v else ""

    lines = ["", "DD-Ranking scores (%; d3hr.evaluation.metrics): IOR against random real subsets under the same "
             "recipe; HLR against the full-data row under the hard-label recipe; LRS, ARS (w = gamma = 0.5).", "",
             "| method | recipe | IPC | epochs | HLR | IOR | LRS | ARS |", "|---|---|---|---|---|---|---|---|"]
    for e in scores:
        name = _named(e["method"], e["sweep"])
        lines.append(f"| {name} | {e['recipe']} | {e['ipc']} | {e['epochs']} | {fmt(e, 'hlr')} | {fmt(e, 'ior')} | "
                     f"{fmt(e, 'lrs')} | {fmt(e, 'ars')} |")
    return "\n".join(lines) + "\n"


def plot_accuracy(table: list[dict[str, Any]], path: Path) -> None:
    """Accuracy vs IPC: one panel per recipe (soft-label recipes first), one line per method and sweep value with the
    same colour in every panel, error bars = std over seeds; sweep rows dashed with open markers."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = {r["recipe"]: r["labels"] for r in table}
    modes = sorted(labels, key=lambda m: (labels[m] != "soft", m))
    series: dict[str, dict[str, list[dict[str, Any]]]] = {}  # name -> labels -> points
    for r in table:
        name = r["method"] + (f" {r['sweep'][0].split('.')[-1]}={r['sweep'][1]}" if r["sweep"] else "")
        series.setdefault(name, {}).setdefault(r["recipe"], []).append(r)
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
        ax.set_title(f"{labels[mode]} labels ({mode})")
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
