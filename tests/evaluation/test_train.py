"""The soft-label loss against a direct KL computation, optimizer groups, and seeded, deterministic training."""

from __future__ import annotations

import math

import pytest
import torch

from d3hr.evaluation import create_student, soft_label_loss
from d3hr.evaluation import train as train_mod
from d3hr.evaluation.recipes import get_recipe
from d3hr.evaluation.train import lr_at, make_optimizer, param_groups, train_model


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
    recipe = get_recipe("rded", epochs=2, batch_size=16, precision=precision).resolve(False)
    result = train_model(model, images, targets, recipe, seed, teacher=teacher, test=(images, targets), track_last=2)
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


def test_dc_recipe_optimizer_and_step_schedule() -> None:
    recipe = get_recipe("dc", epochs=10)
    opt = make_optimizer(create_student("convnet", 10, 1, 8), recipe)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4]  # DC decays every parameter
    assert [lr_at(recipe, step, 3) for step in (0, 14, 15, 29)] == [0.01, 0.01, pytest.approx(0.001),
                                                                     pytest.approx(0.001)]
    cosine = get_recipe("rded", epochs=2)
    assert lr_at(cosine, 0, 5) == 1e-3 and lr_at(cosine, 5, 5) == pytest.approx(5e-4)


def _hard_run(epochs: int, checkpoint=None) -> tuple[torch.nn.Module, list[float]]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=g)
    targets = torch.arange(40) % 10
    torch.manual_seed(0)
    model = create_student("convnet", 10, 1, 8)
    recipe = get_recipe("dc", epochs=epochs, batch_size=16).resolve(False)
    result = train_model(model, images, targets, recipe, 3, checkpoint=checkpoint, checkpoint_seconds=0.0)
    return model, result.losses


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch) -> None:
    straight, losses = _hard_run(4)
    real, calls = train_mod.train_one_epoch, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    ckpt = tmp_path / "ckpt.safetensors"
    monkeypatch.setattr(train_mod, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _hard_run(4, ckpt)
    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    resumed, resumed_losses = _hard_run(4, ckpt)
    assert resumed_losses == losses  # epochs 1-2 restored from the checkpoint, 3-4 trained again
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
