"""RUN/report.html: one self-contained page (images inlined as base64 PNG) summarising a run.

Sections, each drawn only from what the run folder holds (a missing optional part gets a sentence, not an error):
the run (manifest.json, config.yaml, stages.json), the distilled images per class, the students' test accuracy
(eval/results.json), the normality of the inversion (stats.safetensors) and the group selection (stages.json).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from d3hr.errors import D3HRError
from d3hr.evaluation.results import read_results
from d3hr.report.grid import class_row
from d3hr.runfolder import class_folders
from d3hr.utils.io import atomic_path, load_arrays, read_json
from d3hr.utils.schema import STAGES, Obj, check, check_manifest

STAGE_ORDER = ("generator", "invert", "select", "generate")
TILE_MAX = 64  # report tiles larger than this are shrunk (keeps ImageNet-sized runs to a readable file size)
CONFIG_SECTIONS = Obj({}, {name: dict for name in ("data", "generator", "diffusion", "select", "generate")})
MIN_COUNT = 20  # classes with fewer inverted images are left out of the histograms, as normality_summary does
CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.2em .8em;text-align:left;border-bottom:1px solid #eee}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.grid td{padding:2px .6em 2px 0;border:none}.grid img{height:64px;image-rendering:pixelated;display:block}
.note{color:#666}figure{display:inline-block;margin:0 1em 1em 0}figcaption{color:#666;font-size:.9em}
"""


def write_report(run_dir: str | Path, per_class: int = 10, max_classes: int = 100) -> Path:
    """Write RUN/report.html (atomically) and return its path.

    ``per_class``: images shown per class; ``max_classes``: classes shown in the image grid (the first ones).
    Raises D3HRError when ``run_dir`` is not a run folder (no manifest.json).
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise D3HRError(f"run folder not found: {root}")
    if not (root / "manifest.json").is_file():
        raise D3HRError(f"{root} has no manifest.json: distill the run first")
    manifest = check_manifest(read_json(root / "manifest.json"), root / "manifest.json")
    config = _read_config(root / "config.yaml")
    stages = (check(read_json(root / "stages.json"), STAGES, root / "stages.json") if (root / "stages.json").is_file()
              else manifest.get("stages") or {})
    stats = load_arrays(root / "stats.safetensors") if (root / "stats.safetensors").is_file() else None
    classes = _class_names(manifest, stats)
    body = [
        _header(root, manifest, config, stages, classes),
        _images(root, manifest, classes, per_class, max_classes),
        _results(root / "eval" / "results.json"),
        _normality(stats, stages.get("invert"), config),
        _selection(stages.get("select"), config, str(manifest.get("method", "?"))),
    ]
    title = f"d3hr report: {root.resolve().name}"
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_e(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")
    out = root / "report.html"
    with atomic_path(out, ".html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out


# ----- reading ---------------------------------------------------------------------------------------------------
def _read_config(path: Path) -> dict[str, Any]:
    """config.yaml as a plain mapping ({} when absent): the report shows it, it need not validate."""
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception as exc:  # YAMLError, and what PyYAML's constructors raise
        raise D3HRError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    return check(data, CONFIG_SECTIONS, path) if data is not None else {}


def _class_names(manifest: dict[str, Any], stats: tuple[dict, dict[str, Any]] | None) -> list[str]:
    if isinstance(manifest.get("classes"), dict):
        return [manifest["classes"][k] for k in sorted(manifest["classes"], key=int)]
    if isinstance(manifest.get("classes"), list):
        return list(manifest["classes"])
    return list(stats[1].get("classes", [])) if stats is not None else []


def _get(mapping: Any, *keys: str, default: Any = None) -> Any:
    """mapping[k1][k2]..., or ``default`` where a level is missing."""
    for k in keys:
        if not isinstance(mapping, dict) or k not in mapping:
            return default
        mapping = mapping[k]
    return mapping


# ----- formatting ------------------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(x: Any, fmt: str = ".4f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _pct(x: Any, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def _table(head: list[str], rows: list[list[str]], numeric: tuple[int, ...] = ()) -> str:
    """An HTML table; every cell is escaped here."""
    def cells(tag: str, values: list[str]) -> str:
        opens = [f'<{tag} class="num">' if i in numeric else f"<{tag}>" for i in range(len(values))]
        return "".join(f"{o}{_e(v)}</{tag}>" for o, v in zip(opens, values))

    lines = [f"<tr>{cells('th', head)}</tr>"] + [f"<tr>{cells('td', r)}</tr>" for r in rows]
    return "<table>\n" + "\n".join(lines) + "\n</table>"


def _png_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return _data_uri(buf)


def _data_uri(png: io.BytesIO) -> str:
    return "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")


def _p(text: str, note: bool = False) -> str:
    return ('<p class="note">' if note else "<p>") + f"{_e(text)}</p>"


# ----- sections --------------------------------------------------------------------------------------------------
def _header(root: Path, manifest: dict[str, Any], config: dict[str, Any], stages: dict[str, Any],
            classes: list[str]) -> str:
    dataset = manifest.get("dataset") or {}
    name = dataset.get("name") if isinstance(dataset, dict) else dataset
    details = [f"{k} {dataset[k]}" for k in ("limit", "image_size") if isinstance(dataset, dict) and dataset.get(k)]
    method, ipc = manifest.get("method", "?"), manifest.get("ipc", _get(config, "select", "ipc", default="?"))
    seed = _get(manifest, "seeds", "seed", default=config.get("seed", "?"))
    diff = config.get("diffusion") or {}
    rows = [
        ["Run folder", str(root.resolve())],
        ["Dataset", f"{name}" + (f" ({', '.join(details)})" if details else "")],
        ["Classes", str(len(classes))],
        ["Method", str(method)],
        ["IPC", str(ipc)],
        ["Seed", str(seed)],
        ["Generator", _generator_text(manifest.get("generator"), config)],
    ]
    if diff and "invert" in stages:
        text = f"DDIM, N = {diff.get('num_steps')} steps, inversion to K = {diff.get('inversion_steps')}"
        if diff.get("guidance_scale") is not None:
            text += f", guidance scale {diff['guidance_scale']}"
        rows.append(["Diffusion", text])
    if versions := manifest.get("versions"):
        rows.append(["Versions", ", ".join(f"{k} {v}" for k, v in versions.items())])
    kv = "\n".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    title = f"{name}, {method}, IPC {ipc}"
    return (f"<h1>d3hr report: {_e(title)}</h1>\n<table>\n{kv}\n</table>\n<h2>Stage timings</h2>\n"
            + _stage_table(stages))


def _generator_text(pointer: Any, config: dict[str, Any]) -> str:
    if isinstance(pointer, dict):
        kind = "pretrained" if pointer.get("pretrained") else "small VAE + DiT trained on the dataset"
        return f"{kind}: {pointer.get('path')}"
    path = _get(config, "generator", "path")
    return f"pretrained: {path}" if path else "none recorded"


def _stage_table(stages: dict[str, Any]) -> str:
    names = [s for s in STAGE_ORDER if s in stages] + sorted(s for s in stages if s not in STAGE_ORDER)
    rows = [[s, _num(stages[s].get("seconds"), ".1f"), _num(stages[s].get("peak_rss_mb"), ".0f")]
            for s in names if isinstance(stages[s], dict)]
    if not rows:
        return _p("No stage timings recorded (no stages.json).", note=True)
    total = sum(float(stages[s].get("seconds") or 0) for s in names if isinstance(stages[s], dict))
    rows.append(["total", f"{total:.1f}", ""])
    return (_table(["stage", "seconds", "peak RSS (MB)"], rows, (1, 2)) + "\n"
            + _p("A stage skipped because it was unchanged keeps the time of the run that computed it.", note=True))


def _images(root: Path, manifest: dict[str, Any], classes: list[str], per_class: int, max_classes: int) -> str:
    head = "<h2>Distilled images</h2>"
    folder = root / "images"
    if not folder.is_dir():
        return head + "\n" + _p(f"No images yet ({folder} does not exist).")
    folders = class_folders(folder)
    names = dict(zip(manifest.get("class_folders") or [], classes))
    if not names and len(folders) == len(classes):
        names = {f.name: c for f, c in zip(folders, classes)}
    rows = []
    for f in folders[:max_classes]:
        name = names.get(f.name, f.name)
        strip = class_row(f, per_class, TILE_MAX)
        cell = (f'<img src="{_png_uri(Image.fromarray(strip))}" alt="{_e(name)}">' if strip is not None
                else '<span class="note">no images</span>')
        rows.append(f"<tr><th>{_e(name)}</th><td>{cell}</td></tr>")
    note = f"One row per class, the first {per_class} images of each."
    if len(folders) > max_classes:
        note += f" The first {max_classes} of {len(folders)} classes are shown."
    return head + "\n" + _p(note, note=True) + '\n<table class="grid">\n' + "\n".join(rows) + "\n</table>"


def _results(path: Path) -> str:
    head = "<h2>Student accuracy</h2>"
    data = read_results(path)
    if not data["summary"]:
        return head + "\n" + _p(f"No results yet: run d3hr evaluate on this run to fill {path}.")
    summary = sorted(data["summary"], key=lambda s: (s.get("student", ""), s.get("labels", ""), s.get("epochs", 0)))
    digests = {s.get("images_sha256") for s in summary}
    cols = ["student", "labels", "epochs", "teacher", "seeds", "top-1 (%)"]
    if len(digests) > 1:
        cols.append("image set")
    rows = []
    for s in summary:
        row = [s.get("student"), s.get("labels"), s.get("epochs"), s.get("teacher") or "-", s.get("n"),
               f"{100 * s['top1_mean']:.2f} ± {100 * s['top1_std']:.2f}"]
        rows.append([str(v) for v in row] + ([str(s.get("images_sha256"))[:8]] if len(digests) > 1 else []))
    parts = [head, _table(cols, rows, (2, 4, 5)),
             _p("Final-epoch top-1 on the full real test set; mean ± sample std over the seeds.", note=True)]
    if len(digests) > 1:
        parts.append(_p("Rows were trained on different image sets (sha256 prefix): the run was re-distilled "
                        "between evaluations.", note=True))
    for arch, t in sorted((data.get("teachers") or {}).items()):
        parts.append(_p(f"Teacher {arch}: test top-1 {_pct(t.get('test_top1'))} after {t.get('epochs')} epochs on "
                        f"{t.get('train_images')} real training images."))
    return "\n".join(parts)


def _normality(stats: tuple[dict, dict[str, Any]] | None, invert: dict[str, Any] | None,
               config: dict[str, Any]) -> str:
    head = "<h2>Normality of the inversion</h2>"
    if stats is None:
        return head + "\n" + _p("No inversion statistics in this run (no stats.safetensors: a baseline, or not "
                                 "distilled this far).")
    tensors, meta = stats
    k = meta.get("inversion_steps", _get(config, "diffusion", "inversion_steps", default="K"))
    before = meta.get("normality_z0") or (invert or {}).get("normality_z0") or {}
    after = meta.get("normality_zk") or (invert or {}).get("normality_zk") or {}
    keep = tensors["count"] >= MIN_COUNT if "count" in tensors else None
    labels = ("VAE latents z0", f"inverted zK (K = {k})")
    diff = config.get("diffusion") or {}
    steps = meta.get("num_steps", diff.get("num_steps", "?"))
    scale = meta.get("guidance_scale", diff.get("guidance_scale"))
    guidance = f", guidance scale {scale}" if scale is not None else ""
    parts = [head, _p(f"Per class and latent dimension, before (VAE latents) and after DDIM inversion to step {k} of "
                      f"{steps}{guidance}. A Gaussian has skewness 0 and excess kurtosis 0.")]
    figures = []
    for key, title in (("skewness", "skewness"), ("excess_kurtosis", "excess kurtosis")):
        series = [_values(tensors.get(f"z0.{key}"), keep), _values(tensors.get(key), keep)]
        if all(s is None for s in series):
            continue
        img, clipped = _histogram(series, labels, title)
        caption = f"{title} per (class, dimension)"
        if clipped:
            caption += f"; {clipped} values beyond the 0.5-99.5 percentiles are counted in the end bins"
        figures.append(f'<figure><img src="{img}" alt="{_e(title)} histogram"><figcaption>{_e(caption)}'
                       "</figcaption></figure>")
    parts.append("\n".join(figures))
    if before or after:
        rows = [[name, _num(before.get(key), ".3f") if key != "share_normal" else _pct(before.get(key), 1),
                 _num(after.get(key), ".3f") if key != "share_normal" else _pct(after.get(key), 1)]
                for name, key in (("mean |skewness|", "mean_abs_skewness"),
                                  ("mean |excess kurtosis|", "mean_abs_excess_kurtosis"),
                                  ("share passing D'Agostino K² (p > 0.05)", "share_normal"))]
        parts.append(_table(["", *labels], rows, (1, 2)))
        parts.append(_p(f"Over classes with at least {MIN_COUNT} training images.", note=True))
    parts += _subsample_and_depth(meta)
    return "\n".join(parts)


def _subsample_and_depth(meta: dict[str, Any]) -> list[str]:
    """How many images the statistics rest on (invert.per_class / tolerance) and, under K=auto, each candidate
    level's normality with the chosen one."""
    parts = []
    sub = meta.get("subsample")
    if isinstance(sub, dict):
        rule = f"stopping rule at tolerance {sub.get('tolerance')}" if sub.get("tolerance") is not None else "no rule"
        parts.append(_p(f"Statistics and diagnostics from {sub.get('inverted')} of {sub.get('available')} training "
                        f"images (invert.per_class = {sub.get('per_class')}, {rule}, IPC {sub.get('ipc')}): the "
                        "standard errors relative to what group sampling resolves are per class in stages.json."))
    depth = meta.get("depth")
    if isinstance(depth, dict) and isinstance(depth.get("levels"), dict):
        rows = [[f"{lv}{' (chosen)' if str(depth.get('chosen')) == lv else ''}", _pct(s.get("share_normal"), 1),
                 _num(s.get("mean_abs_skewness"), ".3f"), _num(s.get("mean_abs_excess_kurtosis"), ".3f")]
                for lv, s in depth["levels"].items()]
        parts.append(_p(f"K chosen from the data (diffusion.inversion_steps = auto): the first level with "
                        f"{depth.get('reach')} of the best reduction in mean |skewness| over the shallowest level."))
        parts.append(_table(["level K", "share normal", "mean |skewness|", "mean |excess kurtosis|"], rows, (1, 2, 3)))
    return parts


def _values(t: Any, keep: Any) -> np.ndarray | None:
    """The finite entries of a (C, D) array, rows of classes in ``keep`` only; None when absent."""
    if t is None:
        return None
    if keep is not None and keep.shape[0] == t.shape[0]:
        t = t[keep]
    a = np.asarray(t, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def _histogram(series: list[np.ndarray | None], labels: tuple[str, str], title: str) -> tuple[str, int]:
    """Overlaid histograms of the series as a PNG data URI, and how many values were clipped into the end bins."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    present = [s for s in series if s is not None and s.size]
    lo, hi = np.percentile(np.concatenate(present), [0.5, 99.5]) if present else (0.0, 0.0)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    bins = np.linspace(lo, hi, 61)
    fig = Figure(figsize=(5.5, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    clipped = 0
    for s, label, color in zip(series, labels, ("tab:orange", "tab:blue")):
        if s is None or not s.size:
            continue
        clipped += int(((s < lo) | (s > hi)).sum())
        ax.hist(np.clip(s, lo, hi), bins=bins, alpha=0.55, color=color, label=f"{label} (n = {s.size})")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel(title)
    ax.set_ylabel("(class, dimension) pairs")
    if ax.get_legend_handles_labels()[0]:  # no series when every class has fewer than MIN_COUNT images
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return _data_uri(buf), clipped


def _selection(select: dict[str, Any] | None, config: dict[str, Any], method: str) -> str:
    head = "<h2>Selection</h2>"
    if not select:
        return head + "\n" + _p("No selection recorded (no select stage in stages.json).")
    cfg = config.get("select") or {}
    loss, gain = select.get("mean_loss"), select.get("mean_loss_gain_over_first")
    if loss is None:
        text = f"{method}: no group loss (this method does not sample groups from inverted statistics)."
    elif method == "base-rs" or cfg.get("strategy") == "random":
        text = f"Base-RS: one random group per class; mean group loss {_num(loss)}."
    else:
        text = (f"Group sampling over m = {cfg.get('candidates', '?')} candidate groups per class (weights "
                f"{cfg.get('weights', '?')}): mean group loss {_num(loss)}, {_pct(gain, 1)} lower than a single "
                "random group (the first candidate drawn).")
    parts = [head, _p(text)]
    if isinstance(details := select.get("details"), dict) and details:
        parts.append(_table(["detail", "value"], [[str(k), str(v)] for k, v in details.items()]))
    if short := select.get("short_classes"):
        parts.append(_p("Classes with fewer training images than IPC: "
                        + ", ".join(f"{name} ({n})" for name, n in short.items()) + "."))
    return "\n".join(parts)
