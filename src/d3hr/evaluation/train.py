"""Training and scoring one network under a named recipe (d3hr.evaluation.recipes): soft labels from a teacher
(RDED / D3HR protocol) or hard labels (DC / DSA protocol).

``train_one_epoch`` and ``validate`` are plain functions (as in timm); ``train_model`` runs the epoch loop, sets the
learning rate per step from the recipe's schedule and, given a checkpoint path, saves its whole state (weights,
optimizer, data-order and augmentation generators, losses) at most every ``checkpoint_seconds`` and after the last
epoch, so that an interrupted training resumes where it stopped and ends with the same numbers as an uninterrupted
one.

Under torchrun the model is wrapped in DistributedDataParallel: every rank draws the same batch and augmentation
(seeded generators), trains on its contiguous share of the batch with the loss scaled so that the averaged gradient
is the full batch's, and validation splits the test set and sums the correct counts.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from d3hr.errors import D3HRError
from d3hr.evaluation.augment import Augment, augment_batch
from d3hr.evaluation.dsa import dsa_augment
from d3hr.evaluation.recipes import Recipe
from d3hr.utils.checkpoint import load_checkpoint, save_checkpoint
from d3hr.utils.dist import get_world
from d3hr.utils.progress import progress
from d3hr.utils.seeding import generator_for

EVAL_BATCH = 500
CHECKPOINT_SECONDS = 60.0  # a resumable training saves its state at most this often (and after the last epoch)
# Input normalisation: None = [-1, 1] (x / 127.5 - 1); else per-channel (mean, std) of [0, 1] pixels, each (C,).
Norm = tuple[torch.Tensor, torch.Tensor] | None
# Recipe precision fp32 vs bf16, measured on this CPU (AVX-512 bf16, no AMX), one thread, batch 64, per training step:
# ConvNet-3 8x8 18.6 ms fp32 vs 21.7 bf16, 32x32 317 vs 325, ResNet-18 32x32 1.81 s vs 2.53 s; channels_last gave
# nothing for ConvNet (+11% at 8x8, 0% at 32x32). Hence fp32 and contiguous tensors; bf16 is for GPUs.


@dataclass
class TrainResult:
    """What a training run measured: final-epoch top-1, top-1 of each tracked last epoch, per-epoch mean loss."""

    top1: float | None
    last_top1: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def to_input(images: torch.Tensor, norm: Norm = None) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float: [-1, 1] when ``norm`` is None, else (x / 255 - mean) / std per channel."""
    if norm is None:
        return images.float() / 127.5 - 1.0
    mean, std = (t.to(images.device).view(1, -1, 1, 1) for t in norm)
    return (images.float() / 255.0 - mean) / std


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (population) of uint8 (N, C, H, W) images scaled to [0, 1], in float64 sums."""
    x = images.double().div_(255.0).transpose(0, 1).reshape(images.shape[1], -1)  # (C, N*H*W)
    return x.mean(1).float(), x.std(1, unbiased=False).float()


def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)), summed over classes, averaged over the batch, times T^2
    (Hinton et al., 2015: keeps gradient magnitudes comparable across temperatures)."""
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    q = F.softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * temperature**2


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Groups with decay on weight matrices and kernels, none on biases and norm parameters (all 1-d tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer: AdamW or SGD with momentum, weight decay on every parameter or not on 1-d ones."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = ([{"params": params, "weight_decay": recipe.weight_decay}] if recipe.decay_norms_biases
              else param_groups(model, recipe.weight_decay))
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum)


def lr_at(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): cosine from lr to 0 over all steps, or lr until epoch
    epochs // 2 and lr / 10 from then on (DC's ``lr_schedule = [Epoch // 2 + 1]``, here at exactly half)."""
    if recipe.schedule == "cosine":
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * step / (recipe.epochs * steps_per_epoch)))
    return recipe.lr * (0.1 if step // steps_per_epoch >= recipe.epochs // 2 else 1.0)


def autocast(device: torch.device, precision: str):
    """bf16 autocast context for ``precision='bf16'``, else a no-op."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def augment(x: torch.Tensor, recipe: Recipe, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """The recipe's augmentation of a float batch: (images, CutMix permutation or None, CutMix lambda)."""
    if recipe.augment in ("rrc-cutmix", "rrc"):
        aug = Augment(x.shape[-1], scale=recipe.crop_scale, flip=bool(recipe.flip), cutmix=recipe.augment != "rrc")
        return augment_batch(x, aug, gen)
    if recipe.augment == "dsa":
        return dsa_augment(x, recipe.dsa_strategy or "", gen, mode="single"), None, 1.0
    if recipe.augment == "crop-flip":
        return dsa_augment(x, "crop_flip" if recipe.flip else "crop", gen, mode="all"), None, 1.0
    return x, None, 1.0


def train_one_epoch(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, opt: torch.optim.Optimizer,
                    recipe: Recipe, first_step: int, order: torch.Generator, aug_gen: torch.Generator,
                    teacher: nn.Module | None = None, norm: Norm = None) -> float:
    """One pass over (N, C, H, W) uint8 ``images`` from optimizer step ``first_step``; soft-label loss when a
    ``teacher`` is given, else cross-entropy (on the CutMix-ed labels where CutMix is on). Returns the mean loss."""
    device = next(model.parameters()).device
    world = get_world()
    model.train()
    n = len(images)
    perm = torch.randperm(n, generator=order)
    batches = perm.tensor_split(math.ceil(n / recipe.batch_size))  # nearly equal (never one, BatchNorm's bane)
    total = 0.0
    for k, idx in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = lr_at(recipe, first_step + k, len(batches))
        x = to_input(images[idx].to(device), norm)
        y = targets[idx].to(device)
        x, mix_perm, lam = augment(x, recipe, aug_gen)  # the same on every rank
        y_b = y[mix_perm.to(device)] if mix_perm is not None else None
        share = 1.0
        if world.distributed:  # this rank's rows of the batch; DDP averages the gradients over ranks
            rows = world.rows(len(x)).to(device)
            share = len(rows) * world.size / len(x)
            x, y = x[rows], y[rows]
            y_b = y_b[rows] if y_b is not None else None
        with autocast(device, recipe.precision):
            logits = model(x)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(x)
        if teacher is not None:
            loss = soft_label_loss(logits, teacher_logits, recipe.temperature or 1.0)
        elif y_b is None:
            loss = F.cross_entropy(logits.float(), y)
        else:
            loss = lam * F.cross_entropy(logits.float(), y) + (1 - lam) * F.cross_entropy(logits.float(), y_b)
        opt.zero_grad(set_to_none=True)
        (loss * share).backward()
        opt.step()
        total += loss.item() * len(x)  # this rank's rows
    return world.sum(total) / n


@torch.no_grad()
def validate(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, precision: str = "fp32",
             norm: Norm = None) -> float:
    """Top-1 accuracy (a fraction) of ``model`` on (N, C, H, W) uint8 ``images``, unaugmented."""
    device = next(model.parameters()).device
    world = get_world()
    model.eval()
    correct = 0
    lo, hi = world.span(len(images))  # this rank's share of the test set
    for i in range(lo, hi, EVAL_BATCH):
        x = to_input(images[i : min(i + EVAL_BATCH, hi)].to(device), norm)
        with autocast(device, precision):
            pred = model(x).argmax(1)
        correct += int((pred.cpu() == targets[i : min(i + EVAL_BATCH, hi)]).sum())
    return int(world.sum(correct)) / len(images)


def train_model(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, recipe: Recipe, seed: int,
                teacher: nn.Module | None = None, test: tuple[torch.Tensor, torch.Tensor] | None = None,
                track_last: int = 0, desc: str = "train", norm: Norm = None, checkpoint: Path | None = None,
                checkpoint_seconds: float = CHECKPOINT_SECONDS) -> TrainResult:
    """Train ``model`` in place for ``recipe.epochs`` epochs (``recipe`` resolved for the dataset); score it on
    ``test`` (images, targets) after the last epoch, and after each of the last ``track_last`` epochs. ``seed``
    fixes data order and augmentation. ``checkpoint``: resume from this file if it exists, and keep it up to date
    (the caller deletes it once the result is stored)."""
    if teacher is not None:
        teacher.eval()
    world = get_world()
    net = model
    if world.distributed:
        if recipe.batch_size < world.size:
            raise D3HRError(f"batch size {recipe.batch_size} is smaller than the {world.size} processes")
        net = torch.nn.parallel.DistributedDataParallel(model)  # broadcasts rank 0's initial weights
    steps_per_epoch = math.ceil(len(images) / recipe.batch_size)
    opt = make_optimizer(model, recipe)
    order, aug_gen = generator_for(seed, "order"), generator_for(seed, "augment")
    result = TrainResult(top1=None)
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        start = _resume(checkpoint, model, opt, order, aug_gen, result)
    bar = progress(recipe.epochs - start, desc, "epoch")
    saved = time.monotonic()
    for epoch in range(start, recipe.epochs):
        result.losses.append(train_one_epoch(net, images, targets, opt, recipe, epoch * steps_per_epoch, order,
                                             aug_gen, teacher, norm))
        if test is not None and epoch >= recipe.epochs - max(track_last, 1):
            result.last_top1.append(validate(model, *test, precision=recipe.precision, norm=norm))
        if checkpoint is not None and world.is_main and (
                epoch + 1 == recipe.epochs or time.monotonic() - saved >= checkpoint_seconds):
            _save(checkpoint, epoch + 1, model, opt, order, aug_gen, result)
            saved = time.monotonic()
        bar.update(1)
        bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
    bar.close()
    if test is not None:
        result.top1 = result.last_top1[-1]
        result.last_top1 = result.last_top1[-track_last:] if track_last else []
    return result


def _save(path: Path, epochs_done: int, model: nn.Module, opt: torch.optim.Optimizer, order: torch.Generator,
          aug_gen: torch.Generator, result: TrainResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"model": model}, opt,
                    {"epochs_done": epochs_done, "losses": result.losses, "last_top1": result.last_top1},
                    generators={"order": order, "augment": aug_gen})


def _resume(path: Path, model: nn.Module, opt: torch.optim.Optimizer, order: torch.Generator,
            aug_gen: torch.Generator, result: TrainResult) -> int:
    meta = load_checkpoint(path, {"model": model}, opt, generators={"order": order, "augment": aug_gen})
    result.losses[:] = meta["losses"]
    result.last_top1[:] = meta["last_top1"]
    return int(meta["epochs_done"])
