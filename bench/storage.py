"""Storage of a distilled set, measured where there is a run and computed from the shapes where there is not: the
PNG images, the pack (``d3hr pack``), the run folder, and the soft labels the RDED protocol would store if they were
precomputed; the generator is a column of its own (one generator serves every set it makes). README "Storage".

    python bench/storage.py RUN [RUN ...]    # one measured row per run folder (each packed into a temporary file)
    python bench/storage.py                  # the computed ImageNet-1K rows only

Soft labels, as SRe2L's relabelling and RDED store them if precomputed: one vector of C float32 logits per image, per
augmented view, per epoch (SOFT_EPOCHS = 300, RDED's; SOFT_VIEWS = 1 view, one RandomResizedCrop + CutMix draw of
each image per epoch).

ImageNet-1K rows (DiT-XL/2 at 256 px, latents D = 4 x 32 x 32, saved at 224 px as the README's command does): the
pack and run-folder files are written with zero tensors of the real shapes and the 1000 wnids as class names (the
size of a safetensors file depends on its shapes only); the PNG size per image is measured on scikit-learn's two
sample photographs cropped and resized to 224 px (natural photographs: an estimate, DiT samples are smoother); the
manifest is sized from its real line format.
"""

from __future__ import annotations

import argparse
import io
import math
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from d3hr import __version__
from d3hr.config import Config, DataConfig
from d3hr.distillation.pack import CONFIG_FIELDS, FORMAT, FORMAT_VERSION, THUMB, config_value, pack_run
from d3hr.runfolder import MANIFEST, POINTER, class_folder_names, image_name
from d3hr.utils.io import read_json, save_tensors

SOFT_EPOCHS = 300  # RDED's student epochs on ImageNet-1K
SOFT_VIEWS = 1  # augmented views of each image per epoch
IMAGENET = {"classes": 1000, "latent": (4, 32, 32), "save_size": 224}
SMALL_FILES = 4_000  # config.yaml, generator.json, stages.json, the marker: about 4 KB together


def soft_label_bytes(images: int, classes: int) -> int:
    return images * SOFT_EPOCHS * SOFT_VIEWS * classes * 4


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def weight_bytes(generator: Path) -> int:
    return sum(p.stat().st_size for part in ("vae", "transformer") for p in (generator / part).rglob("*.safetensors"))


def measured(run: Path) -> dict:
    """One row from a run folder: its PNGs, its pack, the files d3hr wrote, the soft labels, its generator."""
    manifest = read_json(run / MANIFEST)
    images = [rel for rel in manifest["files"] if rel.startswith("images/")]
    with tempfile.TemporaryDirectory() as tmp:
        pack = pack_run(run, Path(tmp) / "set.d3hr")
    listed = sum((run / rel).stat().st_size for rel in manifest["files"]) + (run / MANIFEST).stat().st_size
    gen = Path(read_json(run / POINTER)["path"]) if (run / POINTER).is_file() else None
    return {"set": f"{manifest['dataset']['name']} IPC {manifest['ipc']} ({manifest['method']})", "n": len(images),
            "png": pack["png_bytes"], "pack": pack["bytes"], "run": listed,
            "soft": soft_label_bytes(len(images), len(manifest["classes"])),
            "generator": weight_bytes(gen) if gen is not None else None}


def png_bytes_natural(side: int) -> float:
    """Mean PNG size of scikit-learn's sample photographs, center-cropped and resized to side x side RGB."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    sizes = []
    for arr in load_sample_images().images:
        im = Image.fromarray(arr)
        w, h = im.size
        m = min(w, h)
        im = im.crop(((w - m) // 2, (h - m) // 2, (w - m) // 2 + m, (h - m) // 2 + m))
        buf = io.BytesIO()
        im.resize((side, side), Image.Resampling.BICUBIC).save(buf, format="PNG")
        sizes.append(len(buf.getvalue()))
    return sum(sizes) / len(sizes)


def dit_xl_parameters() -> tuple[int, int]:
    """Parameters of facebook/DiT-XL-2-256 in the diffusers layout d3hr loads (its transformer, its SD VAE), counted
    on the meta device from their configs (no weights)."""
    from diffusers import AutoencoderKL, DiTTransformer2DModel

    with torch.device("meta"):
        dit = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                    num_layers=28, sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                            layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=256)
    return sum(p.numel() for p in dit.parameters()), sum(p.numel() for p in vae.parameters())


def _file_bytes(tensors: dict[str, torch.Tensor], meta: dict) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        save_tensors(Path(tmp) / "f", tensors, meta)
        return (Path(tmp) / "f").stat().st_size


def computed_imagenet(ipc: int, png: float, generator_params: int) -> dict:
    """One ImageNet-1K row from the shapes (see the module notes)."""
    from d3hr.data.classmap import imagenet_wnid_to_index

    c, latent = IMAGENET["classes"], IMAGENET["latent"]
    d, n = math.prod(latent), IMAGENET["classes"] * ipc
    wnids = sorted(imagenet_wnid_to_index())
    z = torch.zeros
    digest = "0" * 64
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "d3hr": __version__, "method": "d3hr",
            "form": "statistics", "ipc": ipc, "classes": wnids, "latent_shape": list(latent),
            "strategy": "group", "config": {f: config_value(Config(), f) for f in CONFIG_FIELDS},
            "keys": {"select": digest, "generate": digest}, "generator": {"sha256": digest,
                                                                          "hint": "facebook/DiT-XL-2-256"},
            "dataset": {**asdict(DataConfig(name="imagefolder", root="/data/imagenet/train")), "sha256": digest},
            "generation": {"threads": 16, "device": "cuda:0", "processes": 8}, "method_details": {},
            "short_classes": {}}
    pack = _file_bytes({"mean": z(c, d), "std": z(c, d), "skewness": z(c, d, dtype=torch.float16),
                        "index": z(c, dtype=torch.long), "pool": z(c, dtype=torch.long),
                        "label": z(c, dtype=torch.long), "image_sha256": z(n, 32, dtype=torch.uint8),
                        "image_thumb": z(n, THUMB, THUMB, dtype=torch.uint8)}, meta)
    stats = _file_bytes({name: z(c, d) for name in ("mean", "std", "skewness", "excess_kurtosis", "z0.mean",
                                                    "z0.std", "z0.skewness", "z0.excess_kurtosis")}
                        | {"count": z(c, dtype=torch.long)}, {"classes": wnids})
    selection = _file_bytes({"latents": z(c, ipc, *latent), "index": z(c, dtype=torch.long),
                             "pool": z(c, dtype=torch.long), "loss": z(c), "loss_first": z(c)}, {"classes": wnids})
    folders = class_folder_names(wnids)
    manifest = sum(len(f'    "images/{f}/{image_name(i)}": "{"0" * 64}",\n') for f in folders for i in range(ipc))
    return {"set": f"ImageNet-1K IPC {ipc} (d3hr, computed)", "n": n, "png": png * n, "pack": pack,
            "run": png * n + stats + selection + manifest + SMALL_FILES, "soft": soft_label_bytes(n, c),
            "generator": generator_params * 4}


def table(rows: list[dict]) -> str:
    head = ("| set | images | PNG images | pack | pack / PNG | run folder | soft labels (RDED, precomputed) | "
            "generator (shared) |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        gen = human(r["generator"]) if r["generator"] is not None else "none"
        lines.append(f"| {r['set']} | {r['n']:,} | {human(r['png'])} | {human(r['pack'])} | "
                     f"{r['pack'] / r['png']:.3f} | {human(r['run'])} | {human(r['soft'])} | {gen} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders to measure")
    args = parser.parse_args()
    rows = [measured(run) for run in args.runs]
    png = png_bytes_natural(IMAGENET["save_size"])
    dit, vae = dit_xl_parameters()
    rows += [computed_imagenet(ipc, png, dit + vae) for ipc in (10, 50)]
    print(table(rows))
    print(f"\nImageNet PNG per image: {png / 1000:.1f} KB (scikit-learn's sample photographs at "
          f"{IMAGENET['save_size']} px); soft labels: {SOFT_EPOCHS} epochs x {SOFT_VIEWS} view x C float32 per image; "
          f"ImageNet generator: DiT-XL/2 {dit / 1e6:.1f} M + VAE {vae / 1e6:.1f} M parameters (diffusers layout), "
          "float32")


if __name__ == "__main__":
    main()
