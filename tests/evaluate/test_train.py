"""The soft-label loss against a direct KL computation, optimizer groups, and seeded, deterministic training."""

from __future__ import annotations

import math

import pytest
import torch

from d3hr.evaluate import create_student, soft_label_loss
from d3hr.evaluate.augment import Augment
from d3hr.evaluate.train import TrainSetup, param_groups, train_model


def test_soft_label_loss_is_kl_times_t_squared() -> None:
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 10, generator=g) * 5, torch.randn(4, 10, generator=g) * 5
    t = 20.0
    q = torch.softmax(teacher / t, 1)
    log_p = torch.log_softmax(student / t, 1)
    direct = (q * (q.log() - log_p)).sum(1).mean() * t**2  # KL(teacher || student) per sample, mean, * T^2
    torch.testing.assert_close(soft_label_loss(student, teacher, t), direct)
    assert soft_label_loss(teacher, teacher, t).abs().item() < 1e-5


def test_soft_label_loss_golden() -> None:
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[2.0 * math.log(3.0), 0.0]])  # at T = 2: q = (3/4, 1/4), p = (1/2, 1/2)
    expected = (0.75 * math.log(1.5) + 0.25 * math.log(0.5)) * 4
    assert soft_label_loss(student, teacher, 2.0).item() == pytest.approx(expected, rel=1e-6)


def test_no_weight_decay_on_norms_and_biases() -> None:
    model = create_student("convnet", 10, 1, 8)
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def _train(seed: int, precision: str = "fp32") -> tuple[torch.nn.Module, float]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8, generator=g)
    targets = torch.arange(30) % 10
    torch.manual_seed(seed)
    model = create_student("convnet", 10, 1, 8)
    teacher = create_student("convnet", 10, 1, 8)
    result = train_model(model, images, targets, TrainSetup(epochs=2, batch_size=16, precision=precision),
                         Augment(8, flip=False), seed, teacher=teacher, test=(images, targets), track_last=2)
    assert len(result.last_top1) == 2 and result.top1 == result.last_top1[-1]
    return model, result.losses[-1]


def test_training_is_deterministic_per_seed() -> None:
    (m1, l1), (m2, l2), (_, l3) = _train(1), _train(1), _train(2)
    assert l1 == l2 and l1 != l3
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


def test_bf16_training_runs() -> None:
    """bf16 autocast is really used (its rounding changes the loss) and trains like fp32."""
    _, loss = _train(0, precision="bf16")
    _, fp32 = _train(0)
    assert math.isfinite(loss) and loss != fp32 and abs(loss - fp32) < 0.05 * abs(fp32)
