"""How many images does inversion need? Per-class subsampling and the stopping rule against full inversion.

Inverting a subsample gives, per image, the same latents as inverting everything (each image's walk is its own), so
this benchmark inverts the whole training set once, keeps every image's latents at the levels asked (the walk to
the deepest passes through the others), and derives the statistics of any setting from them exactly as the invert
stage streams them: the plan of d3hr.distillation.subsample (the same seeded order, rounds and rule), the same
moments, the same stats file (d3hr.distillation.invert.stats_payload). Each setting's stats file is put in the
statistics cache under the key the invert stage computes for that config, so ``d3hr distill`` then runs select
and generate on it (its record says ``from_cache``). A real run of the default rule checks the emulation: when its
cache entry already exists, the emulated statistics are compared with it instead of replacing it.

    # 1. latents of every training image at levels 10..31 (resumable by parts; a scratch folder, not committed)
    python bench/invert_subsample.py invert --out /work/scratch/fm-invert
    # 2. per setting and seed: errors against full inversion, selection loss, images, then distill + evaluate
    python bench/invert_subsample.py analyse --out /work/scratch/fm-invert --ipc 10 --seeds 0,1,2 \\
        --settings 50,100,300,1000,all,rule0.2,rule0.3 --labels soft,hard --results bench/results/invert-subsample
    # 3. the K=auto rule on the stored levels: every image, and the default rule's subsample
    python bench/invert_subsample.py depth --out /work/scratch/fm-invert --ipc 10 --seeds 0,1,2
    # or: real runs. A compare folder whose D3HR cells sweep invert.per_class (bench/campaign.py --plan subsample)
    # beside its default cells: images and seconds the invert stage spent, errors against the per_class=all
    # statistics, selection loss against them, and top-1 per recipe, paired by seed
    python bench/invert_subsample.py grid --out GRID --ipc 10 --results bench/results/invert-subsample

Inversion time of a setting = its images x the seconds per image measured in step 1 (inversion is linear in the
images inverted: bench/end_to_end.py); step 1 prints the seconds per image it measured and the thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

LEVELS = "10,15,20,25,31"


def _config(dataset: str, out: Path, ipc: int, seed: int, sets: list[str]) -> Any:
    from d3hr.config import load_config, nest, parse_override

    over = [nest("data.name", dataset), nest("select.ipc", ipc), nest("seed", seed), nest("out", str(out))]
    return load_config(None, over + [nest(*parse_override(s)) for s in sets])


def invert_all(args: argparse.Namespace) -> None:
    """Step 1: z0 and the latents at every level of every training image, in parts of ``--part`` images."""
    from d3hr.data import fit_to_model
    from d3hr.diffusion import ddim_invert_levels
    from d3hr.distillation.pipeline import Run
    from d3hr.utils.io import load_tensors, save_tensors

    torch.set_num_threads(args.threads)
    run = Run(_config(args.dataset, args.out / "gen-run", 10, 0, args.set))
    gen, ctx = run.generator(), run.ctx
    ds, grid, eps_fn, labels_map = ctx.train_set, ctx.grid(gen), ctx.eps_fn(gen), ctx.class_labels(gen)
    parts = args.out / "latents"
    parts.mkdir(parents=True, exist_ok=True)
    timing = args.out / "timing.json"
    times = json.loads(timing.read_text()) if timing.is_file() else {}
    bs, levels = ctx.cfg.diffusion.batch_size, [int(k) for k in args.levels.split(",")]
    for start in range(0, len(ds), args.part):
        path = parts / f"{start:06d}.safetensors"
        if path.is_file() and load_tensors(path)[1].get("levels") == levels:
            continue
        t0, out = time.time(), {"z0": [], **{f"z{k}": [] for k in levels}}
        for i in range(start, min(start + args.part, len(ds)), bs):
            idx = np.arange(i, min(i + bs, start + args.part, len(ds)))
            y = torch.as_tensor(ds.targets[idx])
            z0 = gen.encode(fit_to_model(ds.load(idx), ctx.cfg.data.image_size, ctx.cfg.data.fit))
            zk = ddim_invert_levels(eps_fn, z0, labels_map[y], grid, levels)
            out["z0"].append(z0.flatten(1).float())
            for k in levels:
                out[f"z{k}"].append(zk[k].flatten(1).float())
        save_tensors(path, {k: torch.cat(v) for k, v in out.items()}, {"levels": levels, "start": start})
        times[str(start)] = {"seconds": time.time() - t0, "images": len(torch.cat(out["z0"])), "threads": args.threads}
        timing.write_text(json.dumps(times, indent=1))
        print(f"part {start}: {times[str(start)]['seconds']:.1f} s", flush=True)
    sec = sum(t["seconds"] for t in times.values()) / sum(t["images"] for t in times.values())
    print(f"{sec * 1000:.1f} ms per image (encode + {max(levels)} inversion steps, {args.threads} threads)")


def _load(out: Path) -> tuple[dict[int, torch.Tensor], float]:
    from d3hr.utils.io import load_tensors

    files = sorted((out / "latents").glob("*.safetensors"))
    parts = [load_tensors(f) for f in files]
    z = {0: torch.cat([p["z0"] for p, _ in parts])}
    z.update({k: torch.cat([p[f"z{k}"] for p, _ in parts]) for k in parts[0][1]["levels"]})
    times = json.loads((out / "timing.json").read_text())
    sec = sum(t["seconds"] for t in times.values()) / sum(t["images"] for t in times.values())
    return z, sec


def _threads(out: Path) -> int:
    """The thread count step 1 ran with (from its timing record)."""
    return max(t["threads"] for t in json.loads((out / "timing.json").read_text()).values())


def stream(plan: Any, z: dict[int, torch.Tensor], targets: np.ndarray, levels: list[int], batch: int) -> Any:
    """The invert stage's loop over ``plan`` on stored latents: moments of z0 and each level, round by round."""
    from d3hr.distillation.moments import Moments

    c = int(targets.max()) + 1
    m0, mk = Moments.zeros(c, z[0].shape[1]), {k: Moments.zeros(c, z[0].shape[1]) for k in levels}
    active, r = list(range(c)), 0
    while active:
        idx = plan.round_indices(r, active)
        for i in range(0, len(idx), batch):
            b = idx[i : i + batch]
            y = torch.as_tensor(targets[b])
            m0 = m0.merge(Moments.from_batch(z[0][b], y, c))
            mk = {k: mk[k].merge(Moments.from_batch(z[k][b], y, c)) for k in levels}
        active = plan.still_active(r, active, list(mk.values()))
        r += 1
    return m0, mk


def _errors(t: dict[str, torch.Tensor], full: dict[str, torch.Tensor]) -> dict[str, float]:
    """RMS over classes and dimensions: mean error in units of the full std, relative std error, skewness error."""
    rms = lambda x: float(x.double().pow(2).mean().sqrt())  # noqa: E731
    return {"mean_in_std": rms((t["mean"] - full["mean"]) / full["std"]), "std_rel": rms(t["std"] / full["std"] - 1),
            "skewness_abs": rms(t["skewness"] - full["skewness"])}


def _selection_loss(run: Path, full: dict[str, torch.Tensor], weights: tuple[float, ...]) -> float:
    """Mean over classes of the group loss of RUN's selected latents, scored against the ``full`` statistics."""
    from d3hr.distillation.group import group_loss_reference
    from d3hr.utils.io import load_tensors

    x = load_tensors(run / "selection.safetensors")[0]["latents"].flatten(2).double()  # (C, ipc, D)
    losses = [float(group_loss_reference(x[c : c + 1], full["mean"][c].double(), full["std"][c].double(),
                                         full["skewness"][c].double(), weights)[0]) for c in range(len(x))]
    return sum(losses) / len(losses)


def analyse(args: argparse.Namespace) -> None:
    """Step 2: every setting x seed: statistics, their errors, the selection loss against the full statistics,
    then distill (from the injected statistics) and evaluate."""
    from d3hr import api
    from d3hr.distillation import invert
    from d3hr.distillation.pipeline import Run
    from d3hr.distillation.subsample import make_plan
    from d3hr.evaluation import evaluate
    from d3hr.utils.io import load_tensors, save_tensors

    torch.set_num_threads(args.threads)
    z, sec = _load(args.out)
    rows: list[dict[str, Any]] = []
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    record = results / f"ipc{args.ipc}{args.tag}.json"
    done = {(r["setting"], r["seed"]): r for r in json.loads(record.read_text())["rows"]} if record.is_file() else {}
    full_t = None
    for setting in ["all", *[s for s in args.settings.split(",") if s != "all"]]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            if setting.startswith("rule"):  # rule<tolerance>: per_class auto under that tolerance
                sets = ["invert.per_class=auto", f"invert.tolerance={float(setting[4:])}"]
            else:  # a cap without the rule, or all
                sets = [f"invert.per_class={setting}", "invert.tolerance=null"]
            sets += [f"diffusion.inversion_steps={args.level}", f"invert.seed={seed}"]  # a subsample per seed
            run = Run(_config(args.dataset, args.out / "runs" / f"ipc{args.ipc}-{setting}-seed{seed}", args.ipc,
                              seed, [*args.set, *sets]))
            ctx = run.ctx
            targets = np.asarray(ctx.train_set.targets)
            plan = make_plan(targets, len(ctx.train_set.classes), ctx.cfg.invert.per_class,
                             ctx.cfg.invert.tolerance, ctx.cfg.invert.check_every, invert.order_seed(ctx), args.ipc)
            key = invert.stage_key(ctx, run.run_until("generator"))
            m0, mk = stream(plan, z, targets, [args.level], ctx.cfg.diffusion.batch_size)
            tensors, meta, extra = invert.stats_payload(ctx, key, m0, mk, plan)
            cached = ctx.cache() / "stats" / f"{key[:16]}.safetensors"
            check = None
            real = load_tensors(cached) if cached.is_file() else None
            if real is not None and not real[1].get("emulated"):  # a real invert stage wrote it: compare
                check = {n: float((real[0][n] - tensors[n]).abs().max()) for n in ("mean", "std", "skewness")}
                check["count_equal"] = bool(torch.equal(real[0]["count"], tensors["count"]))
            elif real is None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                save_tensors(cached, tensors, {**meta, **extra, "emulated": True})
            if setting == "all":
                full_t = tensors
            n = int(tensors["count"].sum())
            row = done.get((setting, seed), {})
            row.update({"setting": setting, "seed": seed, "images": n, "per_class": tensors["count"].tolist(),
                        "inversion_seconds": round(n * sec, 1), "errors": _errors(tensors, full_t),
                        "normality_zk": meta["normality_zk"], "real_stage_check": check})
            api.distill(run.cfg)
            row["selection_loss_vs_full"] = _selection_loss(ctx.root, full_t, tuple(run.cfg.select.weights))
            for labels in [x for x in args.labels.split(",") if x]:
                if f"top1_{labels}" in row:
                    continue
                res = evaluate(run.cfg.out, labels=labels, seeds=[seed])
                row[f"top1_{labels}"] = res["records"][-1]["top1"]
                row[f"recipe_{labels}"] = res["records"][-1].get("setup", {}).get("name")
            done[(setting, seed)] = row
            rows = list(done.values())
            record.write_text(json.dumps({"ipc": args.ipc, "level": args.level,
                                          "seconds_per_image": sec, "threads_step1": _threads(args.out), "rows": rows},
                                         indent=1))
            print(json.dumps({k: v for k, v in row.items() if k != "per_class"}), flush=True)
    write_table(results, args.ipc)


def depth(args: argparse.Namespace) -> None:
    """Step 3: the K=auto rule (d3hr.distillation.depth) on the stored levels, with every image and with the default
    rule's subsample at ``--ipc`` (seeds ``--seeds``), written to RESULTS/depth.json."""
    from d3hr.distillation.context import Context
    from d3hr.distillation.depth import choose_level
    from d3hr.distillation.moments import normality_summary
    from d3hr.distillation.subsample import make_plan

    torch.set_num_threads(args.threads)
    z, _ = _load(args.out)
    levels = sorted(k for k in z if k > 0)
    cfg = _config(args.dataset, args.out / "gen-run", args.ipc, 0, args.set)
    targets = np.asarray(Context(cfg).train_set.targets)
    out: dict[str, Any] = {"levels": levels, "reach": args.reach, "cases": []}
    cases = [("all", None)] + [(f"rule{args.tolerance_depth} seed {s}", int(s)) for s in args.seeds.split(",")]
    for name, seed in cases:
        plan = make_plan(targets, int(targets.max()) + 1, "all" if seed is None else "auto",
                         None if seed is None else args.tolerance_depth, 50, seed or 0, args.ipc)
        _, mk = stream(plan, z, targets, levels, 256)
        per = {k: normality_summary(m) for k, m in mk.items()}
        chosen = choose_level(levels, [per[k]["mean_abs_skewness"] for k in levels], args.reach)
        by_share = choose_share(levels, [per[k]["share_normal"] for k in levels], 0.02)
        out["cases"].append({"case": name, "images": int(mk[levels[0]].n.sum()), "chosen": chosen,
                             "chosen_by_share_normal_rise_0.02": by_share,
                             "levels": {str(k): per[k] for k in levels}})
        print(name, "chosen K =", chosen, "(by the share of normal dimensions:", by_share, ")",
              {k: round(per[k]["mean_abs_skewness"], 3) for k in levels}, flush=True)
    Path(args.results).mkdir(parents=True, exist_ok=True)
    (Path(args.results) / f"depth-ipc{args.ipc}.json").write_text(json.dumps(out, indent=1))


def choose_share(levels: list[int], share: list[float], rise: float) -> int:
    """The first version of the K=auto rule, for comparison: the smallest level after which the share of normal
    dimensions (K^2) rises by at most ``rise`` (it depends on how many images were inverted)."""
    for i, level in enumerate(levels):
        if max(share[i:]) - share[i] <= rise:
            return level
    return levels[-1]


def write_table(results: Path, ipc: int) -> None:
    """RESULTS/ipc<IPC>.md: mean ± std over seeds per setting, from every ipc<IPC>*.json record there (processes
    that ran other seeds write records of their own with --tag)."""
    records = sorted(results.glob(f"ipc{ipc}.json")) + sorted(results.glob(f"ipc{ipc}-*.json"))
    data = json.loads(records[0].read_text())
    by: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        for r in json.loads(record.read_text())["rows"]:
            by.setdefault(r["setting"], []).append(r)
    out = results / f"ipc{ipc}.md"

    lines = [f"IPC {data['ipc']}, K = {data['level']}; inversion time = images x "
             f"{1000 * data['seconds_per_image']:.1f} ms (measured, {data['threads_step1']} threads)", "",
             "| per class | images | inversion time | speed-up | mu err (/sigma) | sigma rel. err | gamma abs. err "
             "| selection loss vs full | soft top-1 | hard top-1 |", "|" + "---|" * 10]
    full_images = by["all"][0]["images"]
    for setting, rs in by.items():
        imgs = sum(r["images"] for r in rs) / len(rs)
        lines.append(f"| {setting} | {imgs:.0f} | {imgs * data['seconds_per_image'] / 60:.1f} min | "
                     f"{full_images / imgs:.1f}x | {_ms([r['errors']['mean_in_std'] for r in rs], digits=3)} | "
                     f"{_ms([r['errors']['std_rel'] for r in rs], digits=3)} | "
                     f"{_ms([r['errors']['skewness_abs'] for r in rs], digits=3)} | "
                     f"{_ms([r['selection_loss_vs_full'] for r in rs], digits=2)} | "
                     f"{_ms([r.get('top1_soft') for r in rs], 100)} | {_ms([r.get('top1_hard') for r in rs], 100)} |")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def grid(args: argparse.Namespace) -> None:
    """Real runs instead of emulated ones: every D3HR cell at ``--ipc`` of the compare folder ``--out`` without a
    sweep (the default rule), with an ``invert.per_class`` sweep or with an ``invert.tolerance`` sweep (setting
    ``rule<tolerance>``); the ``all`` cell of the same seed is the reference. A run whose statistics came from the
    cache (another seed's inversion) is timed by the run that made them. Writes RESULTS/grid-ipc<IPC>.json and .md."""
    from d3hr.config import load_config
    from d3hr.utils.io import load_tensors

    cells: dict[tuple[str, int], dict[str, Any]] = {}  # (setting, seed) -> its run folder and top-1 per recipe
    for r in json.loads((args.out / "results.json").read_text())["cells"]:
        sweep = r["sweep"]
        if (r["method"], r["ipc"], r["student"]) == ("d3hr", args.ipc, "convnet") and (
                sweep is None or sweep[0] in ("invert.per_class", "invert.tolerance")):
            setting = ("rule" if sweep is None else
                       f"rule{sweep[1]}" if sweep[0] == "invert.tolerance" else str(sweep[1]))
            cell = cells.setdefault((setting, r["seed"]), {"run": args.out / "runs" / Path(r["run"]).name, "top1": {}})
            cell["top1"][r["recipe"]] = r["top1"]
    invert = {c["run"]: json.loads((c["run"] / "stages.json").read_text())["invert"]
              for c in cells.values() if (c["run"] / "stages.json").is_file()}
    # runs that found their statistics in the cache (another seed's inversion) take the time of the run that made them
    made = {v["key"]: v["seconds"] for v in invert.values() if "from_cache" not in v}
    rows = []
    for (setting, seed), cell in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        run, ref = cell["run"], cells.get(("all", seed), {}).get("run")
        if ref is None or not (run / "stats.safetensors").is_file() or not (ref / "stats.safetensors").is_file():
            continue
        stats, full = load_tensors(run / "stats.safetensors")[0], load_tensors(ref / "stats.safetensors")[0]
        weights = tuple(load_config(run / "config.yaml").select.weights)
        inv = invert[run]
        rows.append({"setting": setting, "seed": seed, "images": int(stats["count"].sum()),
                     "inversion_seconds": made.get(inv["key"]) if "from_cache" in inv else inv["seconds"],
                     "inverted_here": "from_cache" not in inv,
                     "errors": _errors(stats, full), "selection_loss_vs_full": _selection_loss(run, full, weights),
                     "top1": cell["top1"]})
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"grid-ipc{args.ipc}.json").write_text(json.dumps({"ipc": args.ipc, "rows": rows}, indent=1) + "\n")
    recipes = sorted({k for r in rows for k in r["top1"]})
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["setting"], []).append(r)
    full_seconds = [r["inversion_seconds"] for r in by.get("all", []) if r["inversion_seconds"] is not None]
    lines = [f"IPC {args.ipc}: real runs (D3HR cells of one compare folder), mean ± std over seeds; inversion time as "
             "the invert stage measured it", "",
             "| per class | seeds | images | inversion time | speed-up | mu err (/sigma) | sigma rel. err "
             "| gamma abs. err | selection loss vs full | " + " | ".join(f"top-1 {k}" for k in recipes) + " |",
             "|" + "---|" * (9 + len(recipes))]
    order = sorted(by, key=lambda k: (k == "all", not k.startswith("rule"), int(k) if k.isdigit() else 0, k))
    for setting in order:
        rs = by[setting]
        timed = [r["inversion_seconds"] for r in rs if r["inversion_seconds"] is not None]
        sec = sum(timed) / len(timed) if timed else 0.0
        speed = f"{(sum(full_seconds) / len(full_seconds)) / sec:.1f}x" if full_seconds and sec > 0 else "-"
        lines.append(f"| {setting} | {len(rs)} | {sum(r['images'] for r in rs) / len(rs):.0f} | {sec / 60:.1f} min | "
                     f"{speed} | {_ms([r['errors']['mean_in_std'] for r in rs], digits=3)} | "
                     f"{_ms([r['errors']['std_rel'] for r in rs], digits=3)} | "
                     f"{_ms([r['errors']['skewness_abs'] for r in rs], digits=3)} | "
                     f"{_ms([r['selection_loss_vs_full'] for r in rs], digits=2)} | "
                     + " | ".join(_ms([r["top1"].get(k) for r in rs], 100) for k in recipes) + " |")
    (results / f"grid-ipc{args.ipc}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _ms(vals: list[float | None], scale: float = 1.0, digits: int = 1) -> str:
    vals = [v * scale for v in vals if v is not None]
    if not vals:
        return "-"
    m = sum(vals) / len(vals)
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def main() -> None:
    from d3hr.utils.heap import keep_freed_memory

    keep_freed_memory()  # as the d3hr command does: 1.3-1.6x faster training steps here
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["invert", "analyse", "table", "depth", "grid"])
    p.add_argument("--out", type=Path, required=True,
                   help="scratch folder: latents, run folders (grid: a compare folder)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--part", type=int, default=2048, help="images per saved part (step 1)")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--levels", default=LEVELS, help="levels whose latents step 1 keeps")
    p.add_argument("--level", type=int, default=31, help="K of the statistics (one of --levels)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--settings", default="50,100,300,1000,all,rule0.2",
                   help="per-class caps (no rule), all, and rule<tolerance> (per_class auto)")
    p.add_argument("--labels", default="soft,hard")
    p.add_argument("--results", default="bench/results/invert-subsample")
    p.add_argument("--set", action="append", default=[], help="a config override for every run (key=value)")
    p.add_argument("--tag", default="", help="analyse: record to ipc<IPC><TAG>.json (-s1: a process of its own)")
    p.add_argument("--reach", type=float, default=0.9, help="depth: the K=auto rule's diffusion.auto_reach")
    p.add_argument("--tolerance-depth", type=float, default=0.2, help="depth: the subsample's rule tolerance")
    args = p.parse_args()
    if args.step == "invert":
        invert_all(args)
    elif args.step == "analyse":
        analyse(args)
    elif args.step == "depth":
        depth(args)
    elif args.step == "grid":
        grid(args)
    else:
        write_table(Path(args.results), args.ipc)


if __name__ == "__main__":
    main()
