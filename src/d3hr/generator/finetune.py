"""Fine-tune a pretrained generator (diffusers layout, e.g. DiT-XL/2) on a new dataset.

For datasets that are not ImageNet subsets (CIFAR, Tiny-ImageNet, Fashion-MNIST) the DiT gets a new label table:
C class rows, each started from the pretrained null (unconditional) row, plus the null row itself, so fine-tuning
starts from the unconditional model. With a class map (ImageNet subsets) the pretrained table is kept and each
class trains its mapped label. The DiT (and optionally the VAE first) trains with the same seeded loop, label
dropout and EMA as a generator trained here, checkpointing every epoch into OUT.partial/ so an interrupted
fine-tune resumes; the result is written to OUT.partial and renamed to OUT.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from d3hr import __version__
from d3hr.config import Config
from d3hr.data import load_raw, resolve_config
from d3hr.errors import D3HRError
from d3hr.generator.model import Generator, load_generator, save_generator
from d3hr.generator.train import encode_dataset, train_dit, train_vae
from d3hr.utils.dist import check_device, get_world, rank_device
from d3hr.utils.folders import claim, write_marker
from d3hr.utils.io import replace_dir
from d3hr.utils.progress import say


def label_embedders(dit: torch.nn.Module) -> list[torch.nn.Module]:
    """The LabelEmbedding of every DiT block (each AdaLayerNormZero block has its own class table)."""
    found = [m for m in dit.modules() if type(m).__name__ == "LabelEmbedding"]
    if not found:
        raise D3HRError("the generator's transformer has no class-label embedding (not a class-conditional DiT)")
    return found


@torch.no_grad()
def relabel(dit: torch.nn.Module, num_classes: int) -> None:
    """Replace the DiT's label table by ``num_classes`` rows plus a null row, all copied from the old null row."""
    for emb in label_embedders(dit):
        old = emb.embedding_table.weight  # (num_old + 1, dim): the last row is the null label
        null = old[emb.num_classes]
        table = torch.nn.Embedding(num_classes + 1, old.shape[1]).to(old.device, old.dtype)
        table.weight.copy_(null.expand(num_classes + 1, -1))
        emb.embedding_table, emb.num_classes = table, num_classes
    dit.register_to_config(num_embeds_ada_norm=num_classes)


def finetune(cfg: Config, out: str | Path, vae_epochs: int = 0) -> Path:
    """Fine-tune ``cfg.generator.path`` on ``cfg.data`` for ``cfg.generator.dit.epochs`` epochs (lr, batch size,
    EMA and label dropout from ``cfg.generator.dit``), after ``vae_epochs`` epochs of VAE fine-tuning; returns OUT.

    ``cfg.generator.class_map`` keeps the pretrained label table (ImageNet subsets); without one the DiT gets a new
    table for the dataset's classes.
    """
    g = cfg.generator
    if g.path is None:
        raise D3HRError("finetune needs --generator (a diffusers directory or hub id)")
    if not g.dit.epochs or g.dit.epochs < 1:
        raise D3HRError(f"finetune needs --epochs >= 1, got {g.dit.epochs}")
    if vae_epochs < 0:
        raise D3HRError(f"finetune needs --vae-epochs >= 0, got {vae_epochs}")
    check_device(cfg.device)
    out = Path(out)
    world = get_world(cfg.device)  # torchrun: data parallel over the ranks (d3hr.generator.train), rank 0 writes
    if world.is_main:
        claim(out, "generator", create=False)  # new, empty, or a generator fine-tuned here: never the user's
    partial = out.with_name(out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    device = torch.device(rank_device(cfg.device, world))
    gen = load_generator(g.path, device)
    raw = load_raw(cfg.data, "train")
    say(resolve_config(cfg, raw.survey(), gen.image_size, int(gen.vae.config.in_channels)).note)
    ds = raw.reshaped(cfg.data.resolution, cfg.data.channels)
    size = cfg.data.image_size  # the generator's own side
    if g.class_map is not None:
        from d3hr.data.classmap import load_class_map

        labels = torch.as_tensor(load_class_map(g.class_map, ds.classes, gen.num_labels))[torch.as_tensor(ds.targets)]
        table = f"pretrained ({gen.num_labels} labels) through class map {g.class_map}"
    else:
        relabel(gen.transformer, len(ds.classes))
        labels = torch.as_tensor(ds.targets)
        table = f"new: {len(ds.classes)} labels started from the pretrained null label"
    torch.manual_seed(g.seed)
    say(f"[finetune] {g.path} on {len(ds)} {ds.name} images at {size} px -> {out} (label table {table})")
    t0 = time.time()
    vae_losses: list[float] = []
    if vae_epochs > 0:
        vae_cfg = type(g.vae)(**{**g.vae.__dict__, "epochs": vae_epochs})
        vae_losses, _ = train_vae(gen, ds, vae_cfg, size, cfg.data.fit, g.seed, g.precision,
                                  partial / "vae.ckpt.safetensors")
    z = encode_dataset(gen, ds, size, cfg.data.fit) * gen.scaling_factor  # (N, c, h, w) scaled
    dit_losses, _ = train_dit(gen, z, labels, g.dit, g.seed, g.precision, partial / "dit.ckpt.safetensors")
    gen.info = {"trained_by": f"d3hr {__version__} finetune", "finetuned_from": str(g.path),
                "base_info": gen.info, "dataset": {"name": cfg.data.name, "root": cfg.data.root,
                                                   "limit": cfg.data.limit, "image_size": size},
                "classes": ds.classes, "label_table": table, "class_map": g.class_map, "seed": g.seed,
                "dit": g.dit.__dict__, "vae_epochs": vae_epochs, "vae_mse_per_epoch": vae_losses,
                "dit_loss_per_epoch": dit_losses, "seconds": round(time.time() - t0, 1)}
    if world.is_main:
        _save(gen, partial, out)
    world.barrier()
    say(f"[finetune] wrote {out} (DiT loss per epoch: {', '.join(f'{x:.4f}' for x in dit_losses)})")
    return out


def _save(gen: Generator, partial: Path, out: Path) -> None:
    """Write the diffusers layout to PARTIAL/model, move it to OUT, and drop the checkpoints."""
    model = partial / "model"
    shutil.rmtree(model, ignore_errors=True)
    save_generator(gen.eval(), model)
    write_marker(model, "generator")
    replace_dir(model, out)
    shutil.rmtree(partial, ignore_errors=True)
