"""DDIM inversion and guided generation: d3hr's batched loop against a batch-1 loop like the authors' scripts.

Side by side in one run, on the same model, latents, labels and steps:

* batch-1: one latent at a time through ``ddim_invert`` / ``ddim_sample`` (with guidance s != 1 each model call is
  the conditional and the null input concatenated, a batch of 2, as in the authors' DiT pipeline loop);
* batched: ``--batch`` latents per call (with guidance: a batch of 2B in one forward pass), fp32;
* batched bf16: the same under bf16 autocast (model calls only; the DDIM arithmetic stays in float32).

It prints latents per second for inversion (guidance 1, as d3hr inverts trained-here generators; ``--guidance``
applies to both) and for generation, the speed-up of batching, and the round-trip error of bf16 against fp32:
||z0 - sample(invert(z0))|| / ||z0|| per precision, and the distance between the fp32 and bf16 results, so that a
speed-up never silently costs accuracy.

Models:
* ``--generator PATH``: a generator in the diffusers layout (e.g. the Fashion-MNIST one d3hr trained and cached);
* ``--model dit-s``: a random DiT-S/2-shaped transformer on 4x32x32 latents (the ImageNet 256 px latent shape;
  12 layers, width 384, 6 heads), no weights needed;
* ``--model tiny``: a random small DiT on 4x8x8 latents (the ``--quick`` smoke run).

Run with a fixed thread count, e.g. ``OMP_NUM_THREADS=2 .venv/bin/python bench/diffusion_loops.py --model dit-s``.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel

from d3hr.diffusion import DDIMGrid, ddim_invert, ddim_sample
from d3hr.diffusion.ddim import make_alphas_cumprod
from d3hr.generator import Generator, load_generator
from d3hr.generator.model import SMALL_SCHEDULE

SHAPES = {
    "tiny": {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 32, "sample_size": 8, "patch_size": 2},
    "dit-s": {"num_layers": 12, "num_attention_heads": 6, "attention_head_dim": 64, "sample_size": 32,
              "patch_size": 2},
}


def random_generator(shape: str, num_labels: int = 1000) -> Generator:
    """A randomly initialised DiT of a named shape (learned-sigma output, like DiT-XL/2) and a token VAE."""
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(in_channels=4, out_channels=8, num_embeds_ada_norm=num_labels, **SHAPES[shape])
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4)  # unused by the loops
    return Generator(vae, dit, make_alphas_cumprod(**SMALL_SCHEDULE), dict(SMALL_SCHEDULE)).eval()


def timed(fn, *args) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def run_loops(gen: Generator, z0: torch.Tensor, labels: torch.Tensor, grid: DDIMGrid, k: int, guidance: float,
              batch: int, one_at_a_time: bool) -> dict[str, object]:
    """Invert z0 (guidance 1) and sample back (``guidance``), in batches of ``batch`` or one latent at a time."""
    inv_fn = lambda z, t, y: gen.eps(z, t, y, 1.0)  # noqa: E731
    gen_fn = lambda z, t, y: gen.eps(z, t, y, guidance)  # noqa: E731
    size = 1 if one_at_a_time else batch
    with torch.inference_mode():
        zk, t_inv = timed(lambda: torch.cat([ddim_invert(inv_fn, z0[i : i + size], labels[i : i + size], grid, k)
                                             for i in range(0, len(z0), size)]))
        back, t_gen = timed(lambda: torch.cat([ddim_sample(gen_fn, zk[i : i + size], labels[i : i + size], grid, k)
                                               for i in range(0, len(zk), size)]))
    return {"zk": zk, "back": back, "invert_s": t_inv, "generate_s": t_gen}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generator", help="diffusers directory (default: a random --model)")
    p.add_argument("--model", default="dit-s", choices=sorted(SHAPES))
    p.add_argument("--latents", type=int, default=32, help="latents per measurement")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--num-steps", type=int, default=50)
    p.add_argument("--inversion-steps", type=int, default=10, help="K (the paper's DiT setting walks 31 of 50)")
    p.add_argument("--guidance", type=float, default=4.0, help="generation guidance (4.0: the authors' value)")
    p.add_argument("--quick", action="store_true", help="tiny model, few latents and steps: a smoke run")
    args = p.parse_args()
    if args.quick:
        args.generator, args.model, args.latents, args.batch, args.inversion_steps = None, "tiny", 8, 8, 3
    gen = load_generator(args.generator) if args.generator else random_generator(args.model)
    name = args.generator or f"random {args.model}"
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(args.latents, *gen.latent_shape, generator=g)
    labels = torch.randint(0, gen.num_labels, (args.latents,), generator=g)
    grid = DDIMGrid.create(gen.alphas_cumprod, args.num_steps)
    k = args.inversion_steps
    print(f"# model {name}: latents {tuple(gen.latent_shape)}, {args.latents} latents, K={k} of {args.num_steps} "
          f"steps, generation guidance {args.guidance}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    rows = {}
    for label, precision, single in (("batch-1 fp32 (authors' loop)", "fp32", True),
                                     (f"batched {args.batch} fp32", "fp32", False),
                                     (f"batched {args.batch} bf16", "bf16", False)):
        gen.precision = precision
        run_loops(gen, z0[:1], labels[:1], grid, 1, args.guidance, args.batch, True)  # warm-up
        rows[label] = run_loops(gen, z0, labels, grid, k, args.guidance, args.batch, single)
    base = rows["batch-1 fp32 (authors' loop)"]
    ref = rows[f"batched {args.batch} fp32"]
    print(f"{'loop':<30} {'invert lat/s':>13} {'speed-up':>9} {'generate lat/s':>15} {'speed-up':>9} "
          f"{'zK vs fp32':>11} {'z0 vs fp32':>11}")
    for label, r in rows.items():
        inv, gen_rate = args.latents / r["invert_s"], args.latents / r["generate_s"]
        dk = float((r["zk"] - ref["zk"]).norm() / ref["zk"].norm())
        d0 = float((r["back"] - ref["back"]).norm() / ref["back"].norm())
        print(f"{label:<30} {inv:>13.2f} {base['invert_s'] / r['invert_s']:>8.1f}x {gen_rate:>15.2f} "
              f"{base['generate_s'] / r['generate_s']:>8.1f}x {dk:>11.2e} {d0:>11.2e}")
    print("zK / z0 vs fp32: ||x - x_fp32|| / ||x_fp32|| of the inverted and of the generated latents against the "
          "batched fp32 loop")
    for precision in ("fp32", "bf16"):  # invert and sample back without guidance: ideally the identity
        gen.precision = precision
        r = run_loops(gen, z0, labels, grid, k, 1.0, args.batch, False)
        err = float((r["back"] - z0).norm() / z0.norm())
        print(f"round trip (guidance 1), batched {precision}: ||z0 - sample(invert(z0))|| / ||z0|| = {err:.2e}")

if __name__ == "__main__":
    main()
