"""The d3hr command line: parse, build a Config, call the library, print a summary."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from d3hr import api
from d3hr.config import METHODS, Config, load_config, nest, parse_override
from d3hr.errors import D3HRError

STAGES = {"train-generator": api.train_generator, "invert": api.invert, "select": api.select,
          "generate": api.generate}

# CLI flag -> dotted config key.
FLAGS = {"dataset": "data.name", "root": "data.root", "download": "data.download", "limit": "data.limit",
         "image_size": "data.image_size", "generator": "generator.path", "class_map": "generator.class_map",
         "ipc": "select.ipc", "method": "select.method", "strategy": "select.strategy",
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
    p.add_argument("--method", help=f"distillation method: {' | '.join(METHODS)} (default d3hr)")
    p.add_argument("--strategy", choices=["group", "random"], help="group sampling (D3HR) or random (Base-RS)")
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
    parser.add_argument("--version", action="version", version=f"d3hr {__import__('d3hr').__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("distill", help="run every stage (unchanged stages are skipped)")
    _add_common(p)
    for name, fn in STAGES.items():
        p = sub.add_parser(name, help=(fn.__doc__ or "").splitlines()[0])
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
    p.add_argument("--seeds", type=int, default=5, help="distillation seeds, each scored by its own student seed")
    p.add_argument("--labels", default="soft", help="soft, hard or soft,hard (recipes rded and dc)")
    p.add_argument("--recipes", help="training recipes by name instead of --labels, e.g. rded,dc")
    p.add_argument("--student", default="convnet")
    p.add_argument("--epochs", type=int, help="override every recipe's epochs (the same at every IPC)")
    p.add_argument("--ars", action="store_true", help="also train every cell without augmentation (DD-Ranking ARS)")
    p.add_argument("--full-seeds", type=int, help="seeds of method 'full' (default: --seeds)")
    p.add_argument("--full-epochs", type=int, help="epochs of method 'full' (default: recipe dc-full's)")
    p.add_argument("--sweep", help="one config key and values, e.g. diffusion.inversion_steps=10,20,31,40")
    p.add_argument("--teacher-epochs", type=int, help="epochs of the soft-label teacher (default: recipe teacher's)")
    p = sub.add_parser("report", help="write RUN/report.html: image grid, accuracy table, normality diagnostics")
    p.add_argument("run", help="run folder")
    p = sub.add_parser("evaluate", help="train students on RUN/images and score them on the real test set")
    p.add_argument("run", help="run folder")
    p.add_argument("--student", default="convnet", help="convnet, convnet_d4, resnet18 or a torchvision model name")
    p.add_argument("--labels", choices=["soft", "hard"], help="default: the recipe's (soft without --recipe)")
    p.add_argument("--recipe", help="training recipe (default: rded for soft labels, dc for hard, dc-full with --full)")
    p.add_argument("--seeds", type=int, default=3, help="number of student seeds (0..n-1)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation (DD-Ranking ARS)")
    p.add_argument("--full", action="store_true", help="train on the whole real training split (the upper bound)")
    p.add_argument("--teacher", help="teacher architecture for soft labels (default: convnet)")
    p.add_argument("--teacher-epochs", type=int, help="epochs of the teacher if it must be trained")
    p.add_argument("--device", default="cpu")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, then RUN/config.yaml if the run exists, then --config, then flags and --set overrides."""
    overrides: list[dict[str, Any]] = []
    for flag, key in FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(nest(key, value))
    overrides += [nest(*parse_override(s)) for s in args.set]
    base = None
    if args.out and (Path(args.out) / "config.yaml").is_file():
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


def _verify(run: str) -> int:
    try:
        problems = api.verify(run)
    except D3HRError as exc:
        print(f"d3hr: error: {exc}", file=sys.stderr)
        return 2
    for p in problems:
        print(f"{run}: {p}")
    if problems:
        print(f"d3hr: verify: {len(problems)} problem(s) in {run}", file=sys.stderr)
        return 1
    print(f"d3hr: verify: every file of {run} matches its manifest")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from d3hr.compare import compare, parse_sweep

    overrides = [nest(key, getattr(args, flag)) for flag, key in
                 (("dataset", "data.name"), ("root", "data.root"), ("limit", "data.limit"),
                  ("generator", "generator.path"), ("device", "device")) if getattr(args, flag) is not None]
    try:
        base = load_config(args.config, overrides + [nest(*parse_override(x)) for x in args.set])
        sweep = parse_sweep(args.sweep) if args.sweep else None
        ipcs = [int(v) for v in args.ipc.split(",") if v.strip()]
        result = compare(base, [m.strip() for m in args.methods.split(",") if m.strip()], ipcs, args.seeds,
                         args.out, labels=[v.strip() for v in args.labels.split(",")], student=args.student,
                         epochs=args.epochs, sweep=sweep, teacher_epochs=args.teacher_epochs,
                         recipes=[v.strip() for v in args.recipes.split(",")] if args.recipes else None,
                         ars_runs=args.ars, full_seeds=args.full_seeds, full_epochs=args.full_epochs)
    except D3HRError as exc:
        print(f"d3hr: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"d3hr: error: --ipc must be comma-separated integers ({exc})", file=sys.stderr)
        return 2
    print((Path(args.out) / "results.md").read_text())
    print(f"d3hr: wrote {Path(args.out) / 'results.md'}, results.json and accuracy.png ({len(result['cells'])} cells)")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from d3hr.generator.finetune import finetune

    overrides = [nest(key, getattr(args, flag)) for flag, key in
                 (("dataset", "data.name"), ("root", "data.root"), ("limit", "data.limit"),
                  ("image_size", "data.image_size"), ("generator", "generator.path"),
                  ("class_map", "generator.class_map"), ("epochs", "generator.dit.epochs"), ("device", "device"))
                 if getattr(args, flag) is not None]
    cfg = load_config(args.config, overrides + [nest(*parse_override(x)) for x in args.set])
    out = finetune(cfg, args.out, vae_epochs=args.vae_epochs)
    print(f"d3hr: wrote the fine-tuned generator {out}; use it with: d3hr distill --generator {out} ...")
    return 0


def _stage(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    fn = api.distill if args.command == "distill" else STAGES[args.command]
    fn(cfg)
    print(_summary(cfg))
    return 0


def _resumable(body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a long command: a D3HRError is a one-line error (exit 2), Ctrl-C says how to resume (exit 130)."""
    try:
        return body(args)
    except D3HRError as exc:
        print(f"d3hr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("d3hr: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _report(run: str) -> int:
    from d3hr.report import write_report

    try:
        path = write_report(run)
    except D3HRError as exc:
        print(f"d3hr: error: {exc}", file=sys.stderr)
        return 2
    print(f"d3hr: wrote {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from d3hr.evaluate import evaluate

    try:
        out = evaluate(args.run, student=args.student, labels=args.labels, seeds=args.seeds, epochs=args.epochs,
                       teacher=args.teacher, teacher_epochs=args.teacher_epochs, device=args.device,
                       recipe=args.recipe, augment=not args.no_augment, full=args.full)
    except D3HRError as exc:
        print(f"d3hr: error: {exc}", file=sys.stderr)
        return 2
    print(f"d3hr: evaluated {args.run}: {out['trained']} trained, {out['skipped']} already done; "
          f"results in {Path(args.run) / 'eval' / 'results.json'}")
    row = out["summary"]
    teacher = f", teacher {row['teacher']}" if row.get("teacher") else ""
    print(f"  {row['student']}, {row['labels']} labels, recipe {row['recipe']}{teacher}, {row['epochs']} epochs: top-1 "
          f"{100 * row['top1_mean']:.2f} +- {100 * row['top1_std']:.2f}% over {row['n']} seeds")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "verify":
        return _verify(args.run)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "report":
        return _report(args.run)
    if args.command == "compare":
        return _compare(args)
    return _resumable(_finetune if args.command == "finetune" else _stage, args)
