"""Memory allocator against training speed: the same student training steps under glibc's defaults, glibc with
transparent huge pages for its large blocks, and jemalloc, side by side in one run.

Every training step allocates activation tensors of tens of MB (ConvNet-3 at batch 256 and 28 px: 100 MB for the
first layer's output alone). glibc serves blocks above its mmap threshold (at most 32 MB) with mmap and returns them
with munmap on free, so every step faults its pages in again: on this VM that shows as a third of the CPU time in
the kernel. Each variant runs in a fresh process (an allocator is chosen at process start) and trains the real
training loop (d3hr.evaluation.train.train_one_epoch) on random uint8 images of Fashion-MNIST's shape for one
untimed and ``--epochs`` timed epochs, and reports seconds per step, minor page faults per step, the share of
CPU time spent in the kernel and the peak resident memory.

    python bench/allocator.py                    # recipes dc (batch 256, DSA) and teacher (batch 128, crops)
    python bench/allocator.py --recipes dc --images 2560 --epochs 2

jemalloc is Debian's libjemalloc2 (``apt install libjemalloc2``); a variant whose library is missing is skipped.
The variants' losses are printed too: an allocator must not change a number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
VARIANTS = {
    "glibc (default)": {"D3HR_MALLOC": "system"},
    "glibc, huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1)": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    "glibc, no mmap, no trim (GLIBC_TUNABLES mmap_max=0, trim_threshold=2^62)": {
        "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4611686018427387904"},
    "glibc, d3hr.utils.heap.keep_freed_memory() (what the d3hr command does)": {"BENCH_KEEP": "1"},
    "jemalloc (LD_PRELOAD)": {"LD_PRELOAD": JEMALLOC},
    "jemalloc, pages kept (MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1)": {
        "LD_PRELOAD": JEMALLOC, "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"},
}


def child(recipe_name: str, images: int, epochs: int, threads: int) -> None:
    """One variant's measurement, printed as one JSON line."""
    if os.environ.get("BENCH_KEEP"):
        from d3hr.utils.heap import keep_freed_memory

        assert keep_freed_memory(), "keep_freed_memory() was not applied"
    import torch

    from d3hr.evaluation.recipes import get_recipe
    from d3hr.evaluation.students import create_student
    from d3hr.evaluation.train import make_optimizer, train_one_epoch
    from d3hr.utils.seeding import generator_for

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, 1, 28, 28), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 10, (images,), generator=gen)
    recipe = get_recipe(recipe_name).resolve(flip=True)
    torch.manual_seed(0)
    model = create_student("convnet", 10, 1, 28)
    opt = make_optimizer(model, recipe)
    order, aug = generator_for(0, "order"), generator_for(0, "augment")
    losses = [train_one_epoch(model, x, y, opt, recipe, 0, order, aug)]  # warm-up, untimed
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for e in range(epochs):
        losses.append(train_one_epoch(model, x, y, opt, recipe, (e + 1) * 10, order, aug))
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    steps = epochs * -(-images // recipe.batch_size)
    cpu_user, cpu_sys = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    print(json.dumps({"s_per_step": wall / steps, "faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
                      "sys_share": cpu_sys / max(cpu_user + cpu_sys, 1e-9), "peak_mb": r1.ru_maxrss / 1024,
                      "losses": losses}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default="dc,teacher")
    ap.add_argument("--images", type=int, default=2560, help="images per epoch (random uint8, 1x28x28)")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs after one untimed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.images, args.epochs, args.threads)
        return
    src = str(Path(__file__).resolve().parents[1] / "src")
    print(f"{args.images} images of 1x28x28, ConvNet-3, {args.epochs} timed epochs, {args.threads} threads")
    print(f"{'recipe':<8} {'allocator':<72} {'s/step':>7} {'vs default':>10} {'faults/step':>12} {'kernel':>7} "
          f"{'peak MB':>8}  losses")
    for name in args.recipes.split(","):
        base = None
        for label, extra in VARIANTS.items():
            if extra.get("LD_PRELOAD") and not Path(extra["LD_PRELOAD"]).is_file():
                print(f"{name:<8} {label:<72} skipped: {extra['LD_PRELOAD']} is missing")
                continue
            env = {**os.environ, **extra, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   "OMP_NUM_THREADS": str(args.threads)}
            cmd = [sys.executable, __file__, "--child", name, "--images", str(args.images), "--epochs",
                   str(args.epochs), "--threads", str(args.threads)]
            out = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
                             .strip().splitlines()[-1])
            base = base or out["s_per_step"]
            losses = " ".join(f"{v:.6f}" for v in out["losses"])
            print(f"{name:<8} {label:<72} {out['s_per_step']:7.3f} {base / out['s_per_step']:9.2f}x "
                  f"{out['faults_per_step']:12.0f} {100 * out['sys_share']:6.0f}% {out['peak_mb']:8.0f}  {losses}",
                  flush=True)


if __name__ == "__main__":
    main()
