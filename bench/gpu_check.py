"""On a GPU: DiT-XL/2-sized inversion and generation throughput at 256 px, and group-sampling time per class.

No weights are needed: the DiT is randomly initialised with the DiT-XL/2-256 configuration (28 layers, width 1152,
16 heads, patch 2, 4x32x32 latents, 1000 labels, learned sigma), which costs the same per call as the real one.
It prints one table:

* inversion (guidance 1) and generation (guidance 4, conditional and null batch in one forward pass) in latents/s,
  fp32 and bf16 autocast, batch ``--batch``, timed over ``--steps`` DDIM steps and scaled to K = 31 steps (the
  paper's 31 of 50);
* group sampling (``select_groups``) at D = 4096, IPC 10 and 50, m = 10,000, seconds per class with per-class pools
  and with one pool shared by C = 1000 classes, drawn and scored on the GPU;
* the round-trip drift of bf16 against fp32 on the inverted latents.

    bash bench/gpu_check.sh           # on the GPU machine
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel

from d3hr.diffusion import DDIMGrid, ddim_invert, ddim_sample
from d3hr.diffusion.ddim import make_alphas_cumprod
from d3hr.distillation.group import select_groups
from d3hr.generator import Generator
from d3hr.generator.model import SMALL_SCHEDULE

DIT_XL_2 = {"num_layers": 28, "num_attention_heads": 16, "attention_head_dim": 72, "sample_size": 32,
            "patch_size": 2, "in_channels": 4, "out_channels": 8, "num_embeds_ada_norm": 1000}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dit_xl(device: torch.device) -> Generator:
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(**DIT_XL_2)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4)  # unused here
    return Generator(vae, dit, make_alphas_cumprod(**SMALL_SCHEDULE), dict(SMALL_SCHEDULE)).to(device).eval()


def loops(gen: Generator, batch: int, steps: int, device: torch.device) -> dict[str, float]:
    grid = DDIMGrid.create(gen.alphas_cumprod, 50)
    g = torch.Generator(device=device).manual_seed(0)
    z0 = torch.randn(batch, 4, 32, 32, generator=g, device=device)
    y = torch.randint(0, 1000, (batch,), generator=g, device=device)
    out = {}
    with torch.inference_mode():
        ddim_invert(lambda z, t, lab: gen.eps(z, t, lab, 1.0), z0[:2], y[:2], grid, 1)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        zk = ddim_invert(lambda z, t, lab: gen.eps(z, t, lab, 1.0), z0, y, grid, steps)
        sync(device)
        out["invert_lat_s"] = batch / ((time.perf_counter() - t0) * 31 / steps)
        t0 = time.perf_counter()
        ddim_sample(lambda z, t, lab: gen.eps(z, t, lab, 4.0), zk, y, grid, steps)
        sync(device)
        out["generate_lat_s"] = batch / ((time.perf_counter() - t0) * 31 / steps)
    out["zk"] = zk
    return out


def group(device: torch.device, ipc: int, classes: int, pools: int | None, m: int = 10_000) -> float:
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(classes, 4096, generator=g)
    std = torch.rand(classes, 4096, generator=g) + 0.5
    skew = torch.randn(classes, 4096, generator=g) * 0.1
    select_groups(mean[:1], std[:1], skew[:1], ipc, 64, (1.0, 1.0, 0.5), 0, device=device)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    select_groups(mean, std, skew, ipc, m, (1.0, 1.0, 0.5), 0, pools=pools, chunk=1024, device=device)
    sync(device)
    return (time.perf_counter() - t0) / classes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="DDIM steps timed (scaled to 31)")
    args = p.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# {name}, torch {torch.__version__}, random DiT-XL/2-256, batch {args.batch}")
    gen = dit_xl(device)
    rows = []
    results = {}
    for precision in ("fp32", "bf16"):
        gen.precision = precision
        r = loops(gen, args.batch, args.steps, device)
        results[precision] = r
        rows.append((f"inversion, {precision}, guidance 1", f"{r['invert_lat_s']:.1f} latents/s (K=31)"))
        rows.append((f"generation, {precision}, guidance 4", f"{r['generate_lat_s']:.1f} latents/s (K=31)"))
    drift = float((results["bf16"]["zk"] - results["fp32"]["zk"]).norm() / results["fp32"]["zk"].norm())
    rows.append(("bf16 vs fp32, inverted latents", f"{drift:.2e} relative"))
    for ipc in (10, 50):
        rows.append((f"group sampling D=4096 IPC {ipc} m=1e4, per-class pools (C=10)",
                     f"{group(device, ipc, 10, None):.4f} s/class"))
        rows.append((f"group sampling D=4096 IPC {ipc} m=1e4, 1 pool shared by C=1000",
                     f"{group(device, ipc, 1000, 1):.5f} s/class"))
    if device.type == "cuda":
        rows.append(("peak GPU memory", f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"))
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{width}}  {b}")


if __name__ == "__main__":
    main()
