"""RandomResizedCrop, flip and CutMix: the geometry on known boxes, and determinism under a seed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop

from d3hr.evaluation.augment import Augment, augment_batch, crop_boxes, cutmix, resized_crop


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_crop_boxes_fit_and_follow_the_scale() -> None:
    boxes = crop_boxes(2000, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), _gen())
    top, left, h, w = boxes.unbind(1)
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 32).all() and (left + w <= 32).all()
    share = (h * w).float() / 32**2
    assert 0.06 < share.min() < 0.1 and share.max() <= 1.0
    torch.manual_seed(0)
    img = torch.zeros(1, 32, 32)
    ref = [RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(2000)]
    ref_share = torch.tensor([hh * ww for _, _, hh, ww in ref]).float() / 32**2
    assert abs(share.mean() - ref_share.mean()) < 0.02  # torchvision's distribution (large shares retried less)


def test_full_box_is_identity_and_flip_mirrors() -> None:
    x = torch.randn(2, 3, 8, 8)
    full = torch.tensor([[0, 0, 8, 8]] * 2)
    out = resized_crop(x, full, 8, torch.tensor([False, True]))
    torch.testing.assert_close(out[0], x[0])
    torch.testing.assert_close(out[1], x[1].flip(-1))


def test_crop_matches_interpolating_the_slice() -> None:
    x = torch.randn(1, 1, 16, 16)
    box = torch.tensor([[3, 5, 8, 6]])  # top, left, h, w
    out = resized_crop(x, box, 16, torch.tensor([False]))
    ref = F.interpolate(x[..., 3:11, 5:11], size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_cutmix_pastes_one_box_and_reports_its_share() -> None:
    """Every image gets the same rectangle from its partner in the permutation, the rest untouched; lambda is the
    share of the original image."""
    x = (torch.arange(4.0)[:, None, None, None] + 1).expand(4, 1, 10, 12).contiguous()  # image i is constant i + 1
    boxes = 0
    for seed in range(8):
        mixed, perm, lam = cutmix(x, _gen(seed))
        pasted = mixed[:, 0] != x[:, 0]  # (4, H, W): where an image changed
        torch.testing.assert_close(mixed, torch.where(pasted[:, None], x[perm], x))  # from the partner, or untouched
        moved = perm != torch.arange(4)
        if not moved.any():  # the identity permutation: nothing to paste
            assert not pasted.any()
            continue
        box = pasted[moved][0]
        assert all(torch.equal(p, box) for p in pasted[moved])  # the same region in every image that has a partner
        if box.any():
            rows, cols = box.any(1).nonzero()[:, 0], box.any(0).nonzero()[:, 0]
            rect = torch.zeros_like(box)
            rect[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
            assert torch.equal(box, rect)  # one axis-aligned box
            boxes += 1
        assert abs(box.float().mean().item() - (1 - lam)) < 1e-6
    assert boxes >= 4  # seen on several draws, not only on empty boxes


def test_augmentation_is_deterministic_per_seed() -> None:
    x = torch.randn(6, 1, 8, 8)
    aug = Augment(8, flip=True, cutmix=True)
    a, b, c = (augment_batch(x, aug, _gen(s)) for s in (1, 1, 2))
    torch.testing.assert_close(a[0], b[0])
    assert a[2] == b[2] and not torch.equal(a[0], c[0])
