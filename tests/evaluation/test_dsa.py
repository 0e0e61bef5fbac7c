"""DSA's evaluation augmentation: each op on known inputs, the per-batch op choice, and determinism under a seed."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from d3hr.evaluation import dsa
from d3hr.evaluation.dsa import DSAParams, dsa_augment, parse_strategy, strategy_for

P = DSAParams()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_strategies_follow_the_authors_readme() -> None:
    assert strategy_for(True) == dsa.STRATEGY == "color_crop_cutout_flip_scale_rotate"
    assert strategy_for(False) == dsa.STRATEGY_NO_FLIP and "flip" not in parse_strategy(dsa.STRATEGY_NO_FLIP)
    with pytest.raises(ValueError, match="unknown DSA op"):
        parse_strategy("crop_blur")


def test_crop_is_an_integer_shift_with_zero_fill() -> None:
    x = torch.arange(1.0, 65.0).view(1, 1, 8, 8).repeat(50, 1, 1, 1)
    out = dsa.crop(x, P, _gen())
    s = int(8 * P.ratio_crop_pad + 0.5)  # 1 pixel
    padded = torch.nn.functional.pad(x[0], (s, s, s, s))
    shifts = {(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)}
    seen = set()
    for img in out:
        match = [(dy, dx) for dy, dx in shifts if torch.equal(img, padded[:, s + dy : s + dy + 8, s + dx : s + dx + 8])]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) == 9  # every shift occurs in 50 draws


def test_cutout_zeros_one_clipped_half_size_square() -> None:
    out = dsa.cutout(torch.ones(200, 2, 8, 8), P, _gen())
    zeros = out[:, 0] == 0
    assert torch.equal(zeros, out[:, 1] == 0)  # the same square in every channel
    counts = zeros.flatten(1).sum(1)
    assert counts.max() == 16 and counts.min() >= 4  # 4x4, clipped at the border to at least 2x2
    for z in zeros:  # a solid rectangle
        rows, cols = z.any(1).nonzero().flatten(), z.any(0).nonzero().flatten()
        assert z[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
        assert int(z.sum()) == len(rows) * len(cols)


def test_flip_mirrors_about_half() -> None:
    x = torch.randn(400, 1, 4, 4)
    out = dsa.flip(x, P, _gen())
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 150 < int(mirrored.sum()) < 250


def test_color_on_one_channel() -> None:
    x = torch.randn(300, 1, 6, 6)
    no_contrast = replace(P, contrast=1.0, brightness=0.0)  # contrast factor u + 1 in [1, 2): only scales
    out = dsa.color(x, no_contrast, _gen())
    centred, out_c = x - x.mean((1, 2, 3), keepdim=True), out - out.mean((1, 2, 3), keepdim=True)
    ratio = out_c.flatten(1).norm(dim=1) / centred.flatten(1).norm(dim=1)
    assert 1.0 <= ratio.min() and ratio.max() < 2.0  # saturation is the identity for one channel
    bright = dsa.color(torch.zeros(500, 1, 2, 2), P, _gen())  # brightness alone on zeros: (u - 1/2) * 1, then contrast
    assert bright.abs().max() <= 0.5 and bright.std() > 0.2  # keeps a constant image constant per sample


def test_scale_and_rotate_are_the_identity_at_ratio_one_and_move_pixels_otherwise() -> None:
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(dsa.scale(x, replace(P, ratio_scale=1.0), _gen()), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(dsa.rotate(x, replace(P, ratio_rotate=0.0), _gen()), x, atol=1e-5, rtol=0)
    assert not torch.allclose(dsa.rotate(x, P, _gen()), x, atol=1e-3)
    assert not torch.allclose(dsa.scale(x, P, _gen()), x, atol=1e-3)


def test_single_mode_draws_one_op_per_batch_and_is_seeded() -> None:
    x = torch.randn(64, 1, 8, 8)
    a, b, c = (dsa_augment(x, dsa.STRATEGY, _gen(s)) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    kinds = set()
    for seed in range(40):
        out = dsa_augment(x, "flip_cutout", _gen(seed))
        flipped = bool(((out == x) | (out == x.flip(3))).all())
        cut = bool((out == 0).any())
        assert flipped != cut  # never both in one batch
        kinds.add("flip" if flipped else "cutout")
    assert kinds == {"flip", "cutout"}
    both = dsa_augment(x, "flip_cutout", _gen(0), mode="all")
    assert bool((both == 0).any())
