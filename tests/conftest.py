"""Shared fixtures: tiny generators and an isolated cache for every test session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("D3HR_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: a hub id fails at once instead of retrying
torch.set_num_threads(2)

# Small enough for the CPU suite; the DiT still sees 16 tokens of a 4x4x4 latent.
TINY = {"block_out_channels": [8, 16], "latent_channels": 4, "layers_per_block": 1, "num_layers": 2,
        "num_attention_heads": 2, "attention_head_dim": 16, "patch_size": 1}
FAST_TRAIN = ["generator.vae.epochs=1", "generator.dit.epochs=2", "generator.vae.block_out_channels=[8,16]",
              "generator.dit.num_layers=2", "generator.dit.num_attention_heads=2",
              "generator.dit.attention_head_dim=16", "select.candidates=256", "diffusion.num_steps=10",
              "diffusion.inversion_steps=6", "data.limit=600"]


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Trained generators go to a cache private to this test session (set before any other fixture runs)."""
    old = os.environ.get("D3HR_CACHE")
    os.environ["D3HR_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    yield
    if old is None:
        os.environ.pop("D3HR_CACHE", None)
    else:
        os.environ["D3HR_CACHE"] = old


@pytest.fixture
def tiny_generator():
    """A seeded random 10-class generator for 8x8 grayscale images."""
    from d3hr.generator import build_small

    torch.manual_seed(0)
    return build_small(num_classes=10, channels=1, image_size=8, **TINY).eval()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread on a busy machine, and a round trip needs the same thread count on both
    sides; a module asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
