"""The d3hr command line: parse, build a Config, call the library, print a summary.

Every command runs under one guard (``main``): a D3HRError (bad input, refused folder, corrupt file) or an OSError
(the file system said no) is one line ``d3hr: error: ...`` and exit code 2, Ctrl-C is one line and exit code 130;
any other exception is a bug and keeps its traceback. ``--debug`` shows the traceback of the first two as well.

Heavy modules (torch, diffusers, the pipeline) are imported inside the commands that use them, so that ``--help``,
``verify`` and ``report`` start at once (bench/cli_startup.py; tests/test_cli_startup.py checks the imports).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from d3hr import __version__
from d3hr.config import Config, load_config, nest, parse_override
from d3hr.errors import D3HRError
from d3hr.utils.folders import owns

EXIT_ERROR = 2  # a D3HRError or OSError: bad input, a refused folder, a corrupt file, the file system
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it

# stage command -> (its function in d3hr.api, help)
STAGES = {"train-generator": ("train_generator", "train (or reuse from the cache) the small generator for the dataset"),
          "invert": ("invert", "encode, invert to level K and fit per-class statistics"),
          "select": ("select", "choose the distilled set (group sampling, Base-RS or a baseline method)"),
          "generate": ("generate", "sample the selected latents back to images")}

# CLI flag -> dotted config key.
FLAGS = {"dataset": "data.name", "root": "data.root", "download": "data.download", "limit": "data.limit",
         "image_size": "data.image_size", "generator": "generator.path", "class_map": "generator.class_map",
         "ipc": "select.ipc", "method": "select.method", "fingerprint": "data.fingerprint",
         "candidates": "select.candidates", "pools": "select.pools", "inversion_steps": "diffusion.inversion_steps",
         "num_steps": "diffusion.num_steps", "guidance": "diffusion.guidance_scale",
         "precision": "diffusion.precision", "seed": "seed", "device": "device",
         "allow_short_classes": "select.allow_short_classes"}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", "-o", help="run folder (default: runs/<dataset>-ipc<ipc>)")
    p.add_argument("--config", help="YAML config file (defaults < RUN/config.yaml < this file < flags)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set select.candidates=1000 (repeatable)")
    p.add_argument("--dataset", help="digits | fashion-mnist | mnist | cifar10 | cifar100 | imagefolder")
    p.add_argument("--root", help="dataset folder (imagefolder, torchvision roots, IDX files)")
    p.add_argument("--download", action="store_true", default=None, help="let torchvision download the dataset")
    p.add_argument("--limit", type=int, help="use only the first N training images")
    p.add_argument("--image-size", type=int, help="generator input size")
    p.add_argument("--generator", help="diffusers directory or hub id with vae/ and transformer/")
    p.add_argument("--class-map", help="'imagenet' or a JSON file {class name: generator label}")
    p.add_argument("--ipc", type=int, help="images per class")
    p.add_argument("--method", help="distillation method (default d3hr; `d3hr methods` lists them)")
    p.add_argument("--fingerprint", choices=["sample", "full", "trust"],
                   help="what caches key the data on: stat + sampled content (default), every byte, or paths only")
    p.add_argument("--candidates", type=int, help="candidate groups per class (m)")
    p.add_argument("--pools", type=int, help="independent candidate pools shared among classes")
    p.add_argument("--inversion-steps", type=int, help="K: DDIM steps walked by inversion and sampling")
    p.add_argument("--num-steps", type=int, help="N: DDIM grid size")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="precision of model calls in the diffusion loops")
    p.add_argument("--allow-short-classes", action="store_true", default=None,
                   help="distill classes with fewer training images than --ipc (recorded in the manifest)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:1, ...")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d3hr", description="Dataset distillation with diffusion models (D3HR).")
    parser.add_argument("--version", action="version", version=f"d3hr {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors reported in one line")
    debug = argparse.ArgumentParser(add_help=False)  # --debug also after the command, without resetting it there
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_sub_parser(debug))
    p = sub.add_parser("distill", help="run every stage (unchanged stages are skipped)")
    _add_common(p)
    for name, (_, text) in STAGES.items():
        p = sub.add_parser(name, help=text)
        _add_common(p)
    p = sub.add_parser("finetune", help="fine-tune a pretrained DiT (optionally its VAE) on a dataset; resumable")
    p.add_argument("--generator", required=True, help="diffusers directory or hub id with vae/ and transformer/")
    p.add_argument("--out", "-o", required=True, help="folder for the fine-tuned generator (diffusers layout)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--root")
    p.add_argument("--limit", type=int)
    p.add_argument("--image-size", type=int, help="training resolution (default: the VAE's)")
    p.add_argument("--class-map", help="keep the pretrained labels through this map (ImageNet subsets); "
                   "default: a new label table for the dataset's classes")
    p.add_argument("--epochs", type=int, default=10, help="DiT epochs")
    p.add_argument("--vae-epochs", type=int, default=0, help="VAE epochs before the DiT (default 0: VAE kept)")
    p.add_argument("--config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="e.g. generator.dit.lr=1e-4, generator.dit.batch_size=256, generator.precision=bf16")
    p.add_argument("--device")
    p = sub.add_parser("pack", help="pack a run into statistics and seeds (one safetensors file) to regenerate it")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", "-o", help="the pack (default: RUN.d3hr beside the run)")
    p = sub.add_parser("unpack", help="regenerate a packed set into a run folder; check every image's sha256")
    p.add_argument("pack", help="a file written by d3hr pack")
    p.add_argument("--out", "-o", required=True, help="run folder to write")
    p.add_argument("--generator", help="diffusers directory or hub id (default: the path packed as a hint)")
    p.add_argument("--force", action="store_true",
                   help="regenerate with another generator (or dataset) than the packed one: the images will differ")
    p.add_argument("--root", help="dataset folder, for packs of training images (random-real, herding)")
    p.add_argument("--check-choice", action="store_true",
                   help="first redo group sampling from the packed statistics (costs what d3hr select costs)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, ...; byte-identical images need the device "
                   "and thread count the set was made with")
    sub.add_parser("methods", help="list the distillation methods and what each needs")
    p = sub.add_parser("verify", help="check every file of a run against the sha256 in its manifest")
    p.add_argument("run", help="run folder")
    p = sub.add_parser("compare", help="distill and evaluate a grid of methods x IPC x seeds; write a table + plot")
    p.add_argument("--out", "-o", required=True, help="folder for the grid's runs, results.md/json, accuracy.png")
    p.add_argument("--dataset")
    p.add_argument("--root")
    p.add_argument("--limit", type=int)
    p.add_argument("--generator")
    p.add_argument("--config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device")
    p.add_argument("--methods", default="d3hr,base-rs,base-ddpm,random-real,herding,kmeans-latent")
    p.add_argument("--ipc", default="1,10,50", help="comma-separated IPC values")
    p.add_argument("--seeds", default="5", help="N (seeds 0..N-1), a list such as 3,4 or a range such as 5-9 (one "
                   "seed: 4-4): distillation seeds, "
                   "each scored by its own student seed; cells of earlier compares into --out are kept")
    p.add_argument("--labels", default="soft", help="soft, hard or soft,hard (recipes rded and dc)")
    p.add_argument("--recipes", help="training recipes by name instead of --labels, e.g. rded,dc")
    p.add_argument("--student", default="convnet")
    p.add_argument("--epochs", type=int, help="override every recipe's epochs (the same at every IPC)")
    p.add_argument("--ars", action="store_true", help="also train every cell without augmentation (DD-Ranking ARS)")
    p.add_argument("--full-seeds", help="seeds of method 'full', as --seeds (default: --seeds)")
    p.add_argument("--full-epochs", type=int, help="epochs of method 'full' (default: recipe dc-full's)")
    p.add_argument("--sweep", help="one config key and values, e.g. diffusion.inversion_steps=10,20,31,40")
    p.add_argument("--teacher-epochs", type=int, help="epochs of the soft-label teacher (default: recipe teacher's)")
    p.add_argument("--metrics", action="store_true",
                   help="also compute each cell's set quality (d3hr metrics: FID, coverage, diversity, ...)")
    p = sub.add_parser("report", help="write RUN/report.html: image grid, accuracy table, normality diagnostics")
    p.add_argument("run", help="run folder")
    p = sub.add_parser("evaluate", help="train students on RUN/images and score them on the real test set")
    p.add_argument("run", help="run folder")
    p.add_argument("--config", help="YAML file of evaluation settings (d3hr.config.EvalConfig)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any evaluation setting, e.g. --set best_of_last=10 (repeatable)")
    p.add_argument("--student", help="convnet (default), convnet_d4, resnet18 or a torchvision model name")
    p.add_argument("--labels", choices=["soft", "hard"], help="default: the recipe's (soft without --recipe)")
    p.add_argument("--recipe", help="training recipe (default: rded for soft labels, dc for hard, dc-full with --full)")
    p.add_argument("--seeds", type=int, help="number of student seeds (0..n-1; default 3)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                   help="train without augmentation (DD-Ranking ARS)")
    p.add_argument("--full", action="store_true", default=None,
                   help="train on the whole real training split (the upper bound)")
    p.add_argument("--teacher", help="teacher architecture for soft labels (default: convnet)")
    p.add_argument("--teacher-epochs", type=int, help="epochs of the teacher if it must be trained")
    p.add_argument("--device", help="cpu (default), cuda, ...")
    p = sub.add_parser("metrics", help="set-quality metrics of RUN/images against the real training images: FID, "
                       "precision / recall / density / coverage, diversity (per class and overall)")
    p.add_argument("run", help="run folder")
    p.add_argument("--k", type=int, help="nearest neighbours of the k-NN radii (default 5)")
    p.add_argument("--real-per-class", type=int, help="real training images per class, at most (default 1000)")
    p.add_argument("--real-max", type=int, help="real images of the overall reference, at most (default 10000)")
    p.add_argument("--teacher", help="architecture of the evaluation teacher whose features are used (default convnet)")
    p.add_argument("--teacher-epochs", type=int, help="epochs of the teacher if it must be trained")
    p.add_argument("--inception", metavar="PATH",
                   help="Inception-v3 features instead, from a local torch-fidelity weights file (needs torchmetrics)")
    p.add_argument("--device", help="cpu (default), cuda, ...")
    return parser


def _sub_parser(debug: argparse.ArgumentParser) -> type[argparse.ArgumentParser]:
    """An ArgumentParser class whose instances (the subcommands) all accept ``debug``'s flags."""

    class SubParser(argparse.ArgumentParser):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, parents=[debug], **kwargs)

    return SubParser


# `d3hr compare` and `d3hr finetune` flags -> dotted Config keys; `d3hr evaluate` flags -> EvalConfig fields.
COMPARE_FLAGS = {flag: FLAGS[flag] for flag in ("dataset", "root", "limit", "generator", "device")}
FINETUNE_FLAGS = {**{flag: FLAGS[flag] for flag in ("dataset", "root", "limit", "image_size", "generator", "class_map",
                                                    "device")}, "epochs": "generator.dit.epochs"}
EVAL_FLAGS = {name: name for name in ("student", "labels", "recipe", "seeds", "epochs", "augment", "full", "teacher",
                                      "teacher_epochs", "device")}


def overrides_from(args: argparse.Namespace, flags: dict[str, str]) -> list[dict[str, Any]]:
    """The one override builder of every command: the dotted keys of the ``flags`` given (not None), then every
    ``--set key=value``, in that order (later ones win)."""
    out = [nest(key, getattr(args, flag)) for flag, key in flags.items() if getattr(args, flag, None) is not None]
    return out + [nest(*parse_override(s)) for s in getattr(args, "set", None) or []]


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, then RUN/config.yaml if the run exists, then --config, then flags and --set overrides."""
    overrides = overrides_from(args, FLAGS)
    base = None
    if args.out and (Path(args.out) / "config.yaml").is_file() and owns(args.out, "run"):
        base = load_config(Path(args.out) / "config.yaml")
        if args.dataset and args.dataset != base.data.name:
            base = None  # a different dataset in the same folder starts from the defaults
    cfg = load_config(args.config, overrides, base=base)
    if args.out:
        cfg.out = args.out
    elif base is None:
        suffix = "" if cfg.select.method == "d3hr" else f"-{cfg.select.method}"
        cfg.out = f"runs/{cfg.data.name}-ipc{cfg.select.ipc}{suffix}"
    return cfg


def _summary(cfg: Config) -> str:
    root = Path(cfg.out)
    lines = ["", f"d3hr: wrote run {root}"]
    for name, what in (("images", "distilled images (ImageFolder of PNGs)"),
                       ("stats.safetensors", "per-class statistics in the inverted domain"),
                       ("selection.safetensors", "selected latents"), ("manifest.json", "manifest with sha256"),
                       ("config.yaml", "resolved config")):
        if (root / name).exists():
            lines.append(f"  {what:<44} {root / name}")
    return "\n".join(lines)


def _verify(args: argparse.Namespace) -> int:
    from d3hr.utils.manifest import verify

    run = args.run
    problems = verify(run)
    for p in problems:
        _out(f"{run}: {p}")
    if problems:
        print(f"d3hr: verify: {len(problems)} problem(s) in {run}", file=sys.stderr)
        return 1
    _out(f"d3hr: verify: every file of {run} matches its manifest")
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    """'1,10,50' -> [1, 10, 50]; anything else is a one-line error naming ``flag``."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise D3HRError(f"{flag} must be comma-separated integers, got {text!r}") from None


def _seeds(text: str, flag: str) -> int | list[int]:
    """'5' -> 5 (seeds 0..4); '3,4' -> [3, 4]; '5-9' -> [5, 6, 7, 8, 9]; else a one-line error naming ``flag``."""
    text = text.strip()
    try:
        if "," not in text and "-" not in text:
            return int(text)
        seeds: list[int] = []
        for part in (v.strip() for v in text.split(",") if v.strip()):
            lo, sep, hi = part.partition("-")
            seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
        return seeds
    except ValueError:
        raise D3HRError(f"{flag} must be a count, a list such as 3,4 or a range such as 5-9, got {text!r}") from None


def _compare(args: argparse.Namespace) -> int:
    from d3hr.compare import compare, parse_sweep

    sweep = parse_sweep(args.sweep) if args.sweep else None
    # under a sweep no cell runs the base as it is (e.g. --set invert.tolerance=null beside --sweep
    # invert.per_class=50,all): compare validates every cell's config before any work instead
    base = load_config(args.config, overrides_from(args, COMPARE_FLAGS), check=sweep is None)
    labels = [v.strip() for v in args.labels.split(",") if v.strip()]
    result = compare(base, [m.strip() for m in args.methods.split(",") if m.strip()], _int_list(args.ipc, "--ipc"),
                     _seeds(args.seeds, "--seeds"), args.out, labels=labels,
                     student=args.student, epochs=args.epochs, sweep=sweep, teacher_epochs=args.teacher_epochs,
                     recipes=[v.strip() for v in args.recipes.split(",")] if args.recipes else None,
                     ars_runs=args.ars, full_epochs=args.full_epochs, set_metrics=args.metrics,
                     full_seeds=_seeds(args.full_seeds, "--full-seeds") if args.full_seeds else None)
    _out((Path(args.out) / "results.md").read_text())
    _out(f"d3hr: wrote {Path(args.out) / 'results.md'}, results.json and accuracy.png ({len(result['cells'])} cells)")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from d3hr.generator.finetune import finetune

    cfg = load_config(args.config, overrides_from(args, FINETUNE_FLAGS))
    out = finetune(cfg, args.out, vae_epochs=args.vae_epochs)
    _out(f"d3hr: wrote the fine-tuned generator {out}; use it with: d3hr distill --generator {out} ...")
    return 0


def _stage(args: argparse.Namespace) -> int:
    from d3hr import api

    cfg = config_from_args(args)
    getattr(api, "distill" if args.command == "distill" else STAGES[args.command][0])(cfg)
    _out(_summary(cfg))
    return 0


def _report(args: argparse.Namespace) -> int:
    from d3hr.report import write_report

    path = write_report(args.run)
    _out(f"d3hr: wrote {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from d3hr.config import load_eval_config
    from d3hr.evaluation import evaluate

    out = evaluate(args.run, **load_eval_config(args.config, overrides_from(args, EVAL_FLAGS)).to_dict())
    _out(f"d3hr: evaluated {args.run}: {out['trained']} trained, {out['skipped']} already done; "
          f"results in {Path(args.run) / 'eval' / 'results.json'}")
    row = out["summary"]
    teacher = f", teacher {row['teacher']}" if row.get("teacher") else ""
    _out(f"  {row['student']}, {row['labels']} labels, recipe {row['recipe']}{teacher}, {row['epochs']} epochs: top-1 "
          f"{100 * row['top1_mean']:.2f} +- {100 * row['top1_std']:.2f}% over {row['n']} seeds")
    return 0


def _metrics(args: argparse.Namespace) -> int:
    from d3hr.evaluation.set_quality import format_table, metrics

    given = {name: getattr(args, name) for name in ("k", "real_per_class", "real_max", "teacher", "teacher_epochs",
                                                    "inception", "device") if getattr(args, name) is not None}
    _out(format_table(metrics(args.run, **given)))
    _out(f"d3hr: wrote {Path(args.run) / 'eval' / 'metrics.json'}")
    return 0


def _pack(args: argparse.Namespace) -> int:
    from d3hr.api import pack

    out = pack(args.run, args.out)
    _out(f"d3hr: packed {args.run} ({out['images']} images, {out['png_bytes']:,} bytes of PNG) into {out['pack']} "
          f"({out['bytes']:,} bytes, {out['form']}); regenerate it with: d3hr unpack {out['pack']} --out RUN")
    return 0


def _unpack(args: argparse.Namespace) -> int:
    from d3hr.api import unpack
    from d3hr.distillation.unpack import ImagesDiffer

    try:
        out = unpack(args.pack, args.out, args.generator, args.force, args.device, args.root, args.check_choice)
    except ImagesDiffer as exc:
        for row in exc.report["differ"]:
            _out(f"{exc.report['run']}: {row['image']}: differs from the pack (thumbnail up to "
                  f"{row['thumbnail_max_diff']} gray levels apart)")
        raise
    if out["differ"]:
        _out(f"d3hr: unpacked {args.pack} into {out['run']} with another generator or dataset (--force): "
              f"{len(out['differ'])} of {out['images']} images differ from the packed ones, as said")
    else:
        _out(f"d3hr: unpacked {args.pack} into {out['run']}: all {out['images']} images byte-identical to the pack")
    return 0


def _methods(args: argparse.Namespace) -> int:
    from d3hr.distillation.methods import METHODS, method_names

    for name in method_names():
        m = METHODS[name]
        needs = ", ".join(n for n, on in (("generator", m.needs_generator), ("inversion", m.needs_inversion)) if on)
        _out(f"{name:<14} {m.summary} [needs: {needs or 'real images only'}; selection at level {m.level}]")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "methods": _methods, "verify": _verify, "evaluate": _evaluate, "metrics": _metrics, "report": _report,
    "compare": _compare, "finetune": _finetune, "pack": _pack, "unpack": _unpack,
    **{name: _stage for name in ("distill", *STAGES)}}


def error_line(exc: BaseException) -> str:
    """One line for a D3HRError or OSError: its message, or an OSError's reason and the file(s) it names."""
    if isinstance(exc, OSError) and exc.strerror:
        files = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        text = f"{exc.strerror}: {files}" if files else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())  # one line, whatever the message held


def _out(*parts: object) -> None:
    """A line of a command's output (stdout), printed by rank 0 only when torchrun runs several processes."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*parts)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (0 done, 1 verify found problems, 2 error, 130 interrupted). Run as
    the program (``argv`` None), it first makes malloc keep freed memory (d3hr.utils.heap: 1.3-1.6x faster training
    steps on CPU; ``D3HR_MALLOC=system`` opts out)."""
    args = build_parser().parse_args(argv)
    if argv is None:
        from d3hr.utils.heap import keep_freed_memory

        keep_freed_memory()
    try:
        code = _dispatch(args)
    except Exception:
        if not _distributed():
            raise
        traceback.print_exc()  # a bug, not bad input: its traceback, then this rank leaves and torchrun stops the rest
        code = 1
    if not _distributed():
        return code
    from d3hr.utils.dist import finish

    return finish(code)


def _distributed() -> bool:
    """Whether this process joined a torch.distributed group; never imports torch (quick commands stay light)."""
    if "torch.distributed" not in sys.modules:
        return False
    from d3hr.utils.dist import distributed_now

    return distributed_now()


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("d3hr: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (D3HRError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"d3hr: error: {error_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
