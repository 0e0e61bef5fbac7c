"""What the default stopping rule of the invert stage saves at ImageNet-1K scale with DiT-XL/2-256 (computed, not run).

Images inverted per class under the rule of d3hr.distillation.subsample: the first round end at which
sqrt(IPC / n) * sqrt(kurtosis factor) <= tolerance, i.e. n = IPC * factor / tolerance^2 rounded up to a multiple of
``check_every``, at most the class's size. The kurtosis factor is mean_d (kappa_d - 1) / 2 over latent dimensions:
1 for Gaussian classes (what D3HR's inversion aims at); the script prints 1 and the value given by --factor.

Cost per image: K inversion steps, each a DiT-XL/2 forward of the conditional and the null label (classifier-free
guidance doubles the batch): 2 K forwards at 118.6 GFLOP each (DiT paper, Table 4, XL/2 at 256 px); the VAE
encoder's one forward per image is left out. H200 hours at a stated rate until bench/gpu_check.sh has measured one:
989 TFLOP/s is its dense bf16 peak; --mfu scales it.

    python bench/imagenet_projection.py --ipc 10,50 --tolerance 0.2
"""

from __future__ import annotations

import argparse
import math

IMAGENET_TRAIN = 1_281_167  # images in ImageNet-1K's training split, 1,000 classes of 732 to 1,300 images
DIT_XL2_GFLOP = 118.6  # one forward at 256 px (32 x 32 x 4 latents)
H200_BF16_TFLOPS = 989.0


def per_class(ipc: int, tolerance: float, factor: float, check_every: int) -> int:
    """Images a class of unlimited size inverts before the rule stops it."""
    need = ipc * factor / tolerance**2
    return int(math.ceil(need / check_every - 1e-9) * check_every)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ipc", default="10,50")
    p.add_argument("--tolerance", type=float, default=0.2)
    p.add_argument("--factor", type=float, default=1.5, help="a kurtosis factor above Gaussian, for comparison")
    p.add_argument("--check-every", type=int, default=50)
    p.add_argument("--k", type=int, default=31, help="inversion steps")
    p.add_argument("--mfu", type=float, default=0.4, help="share of the H200's bf16 peak reached")
    args = p.parse_args()
    mean_size = IMAGENET_TRAIN / 1000
    rate = H200_BF16_TFLOPS * 1e12 * args.mfu
    flop_per_image = 2 * args.k * DIT_XL2_GFLOP * 1e9
    print(f"ImageNet-1K, DiT-XL/2-256, K = {args.k}, tolerance {args.tolerance}, rounds of {args.check_every}; "
          f"classes taken at the mean size {mean_size:.0f} (smallest 732); H200 at {args.mfu:.0%} of "
          f"{H200_BF16_TFLOPS:.0f} TFLOP/s bf16")
    print(f"{'IPC':>4} {'factor':>6} {'per class':>9} {'images':>10} {'share':>6} {'DiT forwards':>13} "
          f"{'PFLOP':>8} {'H200 h':>7}")
    full = IMAGENET_TRAIN
    print(f"{'all':>4} {'-':>6} {mean_size:9.0f} {full:10d} {1.0:6.2f} {2 * args.k * full:13.3e} "
          f"{full * flop_per_image / 1e15:8.0f} {full * flop_per_image / rate / 3600:7.2f}")
    for ipc in (int(x) for x in args.ipc.split(",")):
        for factor in (1.0, args.factor):
            n = min(per_class(ipc, args.tolerance, factor, args.check_every), 1300)
            images = min(IMAGENET_TRAIN, round(min(n, mean_size) * 1000))
            print(f"{ipc:4d} {factor:6.2f} {n:9d} {images:10d} {images / full:6.2f} {2 * args.k * images:13.3e} "
                  f"{images * flop_per_image / 1e15:8.0f} {images * flop_per_image / rate / 3600:7.2f}")


if __name__ == "__main__":
    main()
