"""The generator trainings' checkpoints: inside an epoch at most every SAVE_SECONDS and SAVE_SHARE of the time."""

import time

import torch

from d3hr.generator import train as train_module
from d3hr.utils.io import load_tensors


def _state(tmp_path, monkeypatch, every: str):
    monkeypatch.setenv("D3HR_CHECKPOINT_SECONDS", every)
    net = torch.nn.Linear(2, 2)
    return train_module._Checkpoints(tmp_path / "c.safetensors", {"net": net}, torch.optim.SGD(net.parameters(), 0.1))


def test_a_slow_save_spaces_the_next_ones(tmp_path, monkeypatch):
    state = _state(tmp_path, monkeypatch, "100")
    rng = torch.Generator()
    state.saved = time.time() - 150
    state.after_batch(rng, 0, 3, 10, 1.0, 3)
    assert load_tensors(tmp_path / "c.safetensors")[1]["batches"] == 3  # 150 s > 100 s: saved
    state.took = 10.0  # a save of 10 s may come at most every 10 / SAVE_SHARE = 200 s
    state.saved = time.time() - 150
    state.after_batch(rng, 0, 4, 10, 1.0, 4)
    assert load_tensors(tmp_path / "c.safetensors")[1]["batches"] == 3
    state.saved = time.time() - 201
    state.after_batch(rng, 0, 5, 10, 1.0, 5)
    assert load_tensors(tmp_path / "c.safetensors")[1]["batches"] == 5
    state.saved = time.time() - 1000
    state.after_batch(rng, 0, 10, 10, 1.0, 10)  # the epoch's last batch: the epoch's save follows
    assert load_tensors(tmp_path / "c.safetensors")[1]["batches"] == 5


def test_the_environment_can_ask_for_every_step_and_restores_the_generator(tmp_path, monkeypatch):
    state = _state(tmp_path, monkeypatch, "0")
    state.took = 10.0
    rng = torch.Generator().manual_seed(3)
    torch.rand(5, generator=rng)
    state.after_batch(rng, 2, 1, 10, 0.5, 64)
    expected = torch.rand(4, generator=rng)
    again = _state(tmp_path, monkeypatch, "0")
    skip, total, count, g = again.epoch_start(2, torch.Generator())
    assert (skip, total, count) == (1, 0.5, 64) and torch.equal(torch.rand(4, generator=g), expected)
    assert again.epoch_start(3, fresh := torch.Generator())[3] is fresh
