"""Training and scoring one network: soft labels from a teacher (RDED / D3HR protocol) or hard labels.

``train_one_epoch`` and ``validate`` are plain functions (as in timm); ``train_model`` runs the epoch loop with
AdamW (no weight decay on norm and bias parameters) and a per-step cosine learning rate.

Under torchrun the model is wrapped in DistributedDataParallel: every rank draws the same batch and augmentation
(seeded generators), trains on its contiguous share of the batch with the loss scaled so that the averaged gradient
is the full batch's, and validation splits the test set and sums the correct counts.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from d3hr.errors import D3HRError
from d3hr.evaluate.augment import Augment, augment_batch
from d3hr.utils.dist import get_world
from d3hr.utils.progress import progress
from d3hr.utils.seeding import generator_for

EVAL_BATCH = 500


@dataclass(frozen=True)
class TrainSetup:
    """Optimisation settings shared by teachers and students."""

    epochs: int
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    temperature: float = 20.0  # soft labels only
    # fp32 | bf16 (autocast). Measured on this CPU (AVX-512 bf16, no AMX), one thread, batch 64, per training step:
    # ConvNet-3 8x8 18.6 ms fp32 vs 21.7 bf16, 32x32 317 vs 325, ResNet-18 32x32 1.81 s vs 2.53 s; channels_last
    # gave nothing for ConvNet (+11% at 8x8, 0% at 32x32). Hence fp32 and contiguous tensors; bf16 is for GPUs.
    precision: str = "fp32"


@dataclass
class TrainResult:
    """What a training run measured: final-epoch top-1, top-1 of each tracked last epoch, per-epoch mean loss."""

    top1: float | None
    last_top1: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float in [-1, 1], the scaling every teacher and student sees."""
    return images.float() / 127.5 - 1.0


def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)), summed over classes, averaged over the batch, times T^2
    (Hinton et al., 2015: keeps gradient magnitudes comparable across temperatures)."""
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    q = F.softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * temperature**2


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices and kernels, none on biases and norm parameters (all 1-d tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def autocast(device: torch.device, precision: str):
    """bf16 autocast context for ``precision='bf16'``, else a no-op."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_one_epoch(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, opt: torch.optim.Optimizer,
                    sched: torch.optim.lr_scheduler.LRScheduler, setup: TrainSetup, aug: Augment,
                    order: torch.Generator, aug_gen: torch.Generator, teacher: nn.Module | None = None) -> float:
    """One pass over (N, C, H, W) uint8 ``images``; soft-label loss when a ``teacher`` is given, else cross-entropy
    on the CutMix-ed labels. Returns the mean loss."""
    device = next(model.parameters()).device
    world = get_world()
    model.train()
    n = len(images)
    perm = torch.randperm(n, generator=order)
    total = 0.0
    # Nearly equal batches (never a batch of one, which BatchNorm cannot train on).
    for idx in perm.tensor_split(math.ceil(n / setup.batch_size)):
        x = to_input(images[idx].to(device))
        y = targets[idx].to(device)
        x, mix_perm, lam = augment_batch(x, aug, aug_gen)  # the same on every rank
        y_b = y[mix_perm.to(device)] if mix_perm is not None else None
        share = 1.0
        if world.distributed:  # this rank's rows of the batch; DDP averages the gradients over ranks
            rows = world.rows(len(x)).to(device)
            share = len(rows) * world.size / len(x)
            x, y = x[rows], y[rows]
            y_b = y_b[rows] if y_b is not None else None
        with autocast(device, setup.precision):
            logits = model(x)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(x)
        if teacher is not None:
            loss = soft_label_loss(logits, teacher_logits, setup.temperature)
        elif y_b is None:
            loss = F.cross_entropy(logits.float(), y)
        else:
            loss = lam * F.cross_entropy(logits.float(), y) + (1 - lam) * F.cross_entropy(logits.float(), y_b)
        opt.zero_grad(set_to_none=True)
        (loss * share).backward()
        opt.step()
        sched.step()
        total += loss.item() * len(x)  # this rank's rows
    return world.sum(total) / n


@torch.no_grad()
def validate(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, precision: str = "fp32") -> float:
    """Top-1 accuracy (a fraction) of ``model`` on (N, C, H, W) uint8 ``images``, unaugmented."""
    device = next(model.parameters()).device
    world = get_world()
    model.eval()
    correct = 0
    lo, hi = world.span(len(images))  # this rank's share of the test set
    for i in range(lo, hi, EVAL_BATCH):
        x = to_input(images[i : min(i + EVAL_BATCH, hi)].to(device))
        with autocast(device, precision):
            pred = model(x).argmax(1)
        correct += int((pred.cpu() == targets[i : min(i + EVAL_BATCH, hi)]).sum())
    return int(world.sum(correct)) / len(images)


def train_model(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, setup: TrainSetup, aug: Augment,
                seed: int, teacher: nn.Module | None = None,
                test: tuple[torch.Tensor, torch.Tensor] | None = None, track_last: int = 0,
                desc: str = "train") -> TrainResult:
    """Train ``model`` in place for ``setup.epochs`` epochs; score it on ``test`` (images, targets) after the last
    epoch, and after each of the last ``track_last`` epochs. ``seed`` fixes data order and augmentation."""
    if teacher is not None:
        teacher.eval()
    world = get_world()
    net = model
    if world.distributed:
        if setup.batch_size < world.size:
            raise D3HRError(f"batch size {setup.batch_size} is smaller than the {world.size} processes")
        net = torch.nn.parallel.DistributedDataParallel(model)  # broadcasts rank 0's initial weights
    steps = setup.epochs * math.ceil(len(images) / setup.batch_size)
    opt = torch.optim.AdamW(param_groups(model, setup.weight_decay), lr=setup.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    order, aug_gen = generator_for(seed, "order"), generator_for(seed, "augment")
    result = TrainResult(top1=None)
    bar = progress(setup.epochs, desc, "epoch")
    for epoch in range(setup.epochs):
        result.losses.append(train_one_epoch(net, images, targets, opt, sched, setup, aug, order, aug_gen,
                                             teacher))
        if test is not None and epoch >= setup.epochs - max(track_last, 1):
            result.last_top1.append(validate(model, *test, precision=setup.precision))
        bar.update(1)
        bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
    bar.close()
    if test is not None:
        result.top1 = result.last_top1[-1]
        result.last_top1 = result.last_top1[-track_last:] if track_last else []
    return result
