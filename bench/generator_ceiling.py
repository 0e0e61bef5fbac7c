"""What the generator itself costs: the same real images, scored as they are and after a trip through the generator.

For each real-image run given (e.g. the random-real cells of a ``d3hr compare`` grid), this writes, beside the grid,
run folders whose images are those same real images

* ``vae``: encoded (posterior mean) and decoded by the generator's VAE;
* ``ddim``: encoded, DDIM-inverted to the run's level K (class-conditional, guidance 1 like the inversion stage) and
  sampled back to level 0 with the run's DDIM grid, then decoded: the path every D3HR image takes, started from a
  real image's own inverted latent instead of a drawn one;

and scores every folder with ``d3hr evaluate`` (against the grid's teacher, from the cache). The
gap real -> vae is what the autoencoder loses, vae -> ddim what the diffusion round trip adds; a generated set
cannot be expected to beat the ``ddim`` row by much, since it is built from the same decoder and sampler.

    D3HR_CACHE=/work/cache OMP_NUM_THREADS=1 .venv/bin/python bench/generator_ceiling.py \\
        --generator-run GRID/runs/d3hr-ipc10-seed0 --real GRID/runs/random-real-ipc10-seed{0,1,2} \\
        --out GRID/ceiling --labels soft --epochs 300

``--variants vae ddim`` leaves out the real row (e.g. when the real run was made again without its evaluation and
the grid's table has the cell). ``--generator-run`` is any d3hr run of the grid whose config names the generator
and K (it is not modified). The student seed of a real run ``...-seed<s>`` is s, as in ``d3hr compare``. Prints one
table (mean +- std over the real runs) and writes OUT/ceiling.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path

import torch

from d3hr.config import load_config
from d3hr.data import fit_to_model, fit_to_saved
from d3hr.data.images import match_channels
from d3hr.diffusion import ddim_invert, ddim_sample
from d3hr.distillation.pipeline import Run
from d3hr.evaluation.runner import evaluate, open_run, read_run_images
from d3hr.runfolder import RunFolder, class_folder_names, save_class_pngs
from d3hr.utils.folders import claim
from d3hr.utils.io import read_json, sha256_file, write_json

VARIANTS = ("vae", "ddim")


def round_trip(run: Run, images: torch.Tensor, targets: torch.Tensor, variant: str, batch: int = 64) -> torch.Tensor:
    """uint8 images (N, C, s, s) of dataset classes ``targets`` -> the same images after ``variant``, uint8."""
    gen, cfg = run.generator(), run.cfg
    labels_map, grid = run.class_labels(gen), run.ctx.grid(gen)
    eps_fn = lambda zt, t, y: gen.eps(zt, t, y, 1.0)  # noqa: E731 - guidance 1 both ways: a deterministic round trip
    k = cfg.diffusion.inversion_steps
    ds = run.train_set
    out = []
    for i in range(0, len(images), batch):
        x = fit_to_model(images[i : i + batch], cfg.data.image_size, cfg.data.fit)
        z0 = gen.encode(x.to(run.ctx.device), sample=False)  # (b, c, h, w)
        if variant == "ddim":
            y = labels_map[targets[i : i + batch]].to(run.ctx.device)
            z0 = ddim_sample(eps_fn, ddim_invert(eps_fn, z0, y, grid, k), y, grid, k)
        x = match_channels(gen.decode(z0).cpu(), ds.channels)
        out.append(fit_to_saved(x, ds.resolution, cfg.data.fit, cfg.generate.save_size))
    return torch.cat(out)


def grid_record(real: Path, labels: str, epochs: int, seed: int) -> float | None:
    """Top-1 of the convnet record (labels, epochs, seed) already in the real run's eval/results.json, if any."""
    path = real / "eval" / "results.json"
    records = read_json(path)["records"] if path.is_file() else []
    found = [r["top1"] for r in records if (r["student"], r["labels"], r["epochs"], r["seed"])
             == ("convnet", labels, epochs, seed)]
    return found[0] if found else None


def generator_stage(generator_run: Path) -> dict:
    """The generator stage's record (key, path, weights sha256) of the run whose generator makes the round trips."""
    stage = RunFolder(generator_run).state().get("generator")
    if not stage or "sha256" not in stage:
        raise SystemExit(f"{generator_run}: stages.json records no generator weights (run its generator stage first)")
    return stage


def write_variant(run: Run, real: Path, variant: str, out: Path, stage: dict) -> Path:
    """OUT/<variant>-<real run name>: config and images of the round-tripped real run (kept when already there).
    The manifest carries the generator ``stage`` of a round trip, so its evaluation records name the weights."""
    name = re.sub(r"^[a-z-]+?-ipc", f"{variant}-ipc", real.name)
    dest = out / name
    if (dest / "images").is_dir():
        return dest
    cfg, test, manifest = open_run(real)
    images, targets, _ = read_run_images(real, test, manifest)
    new = images if variant == "real" else round_trip(run, images, targets, variant)
    claim(dest, "run")
    shutil.copy(real / "config.yaml", dest / "config.yaml")
    folders = class_folder_names(test.classes)
    tmp = dest / "images.partial"
    for c, folder in enumerate(folders):
        save_class_pngs(tmp / folder, new[targets == c])
    files = {f"images/{p.relative_to(tmp).as_posix()}": sha256_file(p) for p in sorted(tmp.rglob("*.png"))}
    write_json(dest / "manifest.json", {"method": f"{variant}: {real.name} through the generator",
                                        "ipc": manifest.get("ipc"),
                                        "classes": {str(i): n for i, n in enumerate(test.classes)},
                                        "class_folders": folders, "source": str(real),
                                        "generator_run": str(run.root), "files": files,
                                        **({} if variant == "real" else {"stages": {"generator": stage}})})
    tmp.rename(dest / "images")
    return dest


def main() -> None:
    from d3hr.utils.heap import keep_freed_memory

    keep_freed_memory()  # as the d3hr command does: 1.3-1.6x faster training steps here
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generator-run", required=True, type=Path, help="a d3hr run whose generator and K are used")
    p.add_argument("--real", required=True, nargs="+", type=Path, help="real-image runs (random-real, herding)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--labels", default="soft", choices=("soft", "hard"))
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--teacher-epochs", type=int, help="only to train a teacher (default: the grid's cached one)")
    p.add_argument("--variants", nargs="+", default=["real", *VARIANTS], choices=["real", *VARIANTS],
                   help="rows to score (default all; leave out real when the grid's table already has its cell)")
    args = p.parse_args()
    runs_dir = args.out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    teachers = args.real[0].resolve().parent / ".teachers"
    if teachers.is_dir() and not (runs_dir / ".teachers").exists():
        os.symlink(teachers, runs_dir / ".teachers")  # a grid of earlier versions kept its teacher beside its runs
    run = Run(load_config(args.generator_run / "config.yaml"))
    stage = generator_stage(args.generator_run)
    rows: dict[str, list[float]] = {}
    for real in args.real:
        seed = int(real.name.rsplit("-seed", 1)[1].split("-")[0])
        for variant in args.variants:
            top1 = grid_record(real, args.labels, args.epochs, seed) if variant == "real" else None
            if top1 is None:  # score a copy (real) or the round trip; the grid's own runs are never written to
                folder = write_variant(run, real, variant, runs_dir, stage)
                res = evaluate(folder, labels=args.labels, seeds=[seed], epochs=args.epochs,
                               teacher_epochs=args.teacher_epochs)
                top1 = res["records"][0]["top1"]
            rows.setdefault(variant, []).append(100 * top1)
    k = run.cfg.diffusion.inversion_steps
    print(f"\n{args.labels} labels, {args.epochs} epochs, real runs: {', '.join(r.name for r in args.real)}; K = {k}")
    table = {}
    for variant, acc in rows.items():
        t = torch.tensor(acc)
        std = float(t.std()) if len(t) > 1 else 0.0
        table[variant] = {"top1": acc, "mean": float(t.mean()), "std": std}
        print(f"{variant:<6} {float(t.mean()):5.1f} +- {std:.1f}   {acc}")
    write_json(args.out / "ceiling.json", {"labels": args.labels, "epochs": args.epochs, "inversion_steps": k,
                                            "generator_run": str(args.generator_run),
                                            "real_runs": [str(r) for r in args.real], "results": table,
                                            "generator": read_json(args.generator_run / "generator.json"),
                                            "generator_sha256": stage["sha256"]})
    print(f"wrote {args.out / 'ceiling.json'}")


if __name__ == "__main__":
    main()
