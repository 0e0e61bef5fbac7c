"""RandomResizedCrop, flip and CutMix: the geometry on known boxes, and determinism under a seed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop

from d3hr.evaluate.augment import Augment, augment_batch, crop_boxes, cutmix, resized_crop


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
    x = torch.arange(4.0)[:, None, None, None].expand(4, 1, 10, 10).contiguous()  # image i is constant i
    mixed, perm, lam = cutmix(x, _gen(3))
    for i in range(4):
        from_other = (mixed[i] == perm[i]).float().mean().item() if perm[i] != i else 1 - lam
        assert abs(from_other - (1 - lam)) < 1e-6


def test_augmentation_is_deterministic_per_seed() -> None:
    x = torch.randn(6, 1, 8, 8)
    aug = Augment(8, flip=True, cutmix=True)
    a, b, c = (augment_batch(x, aug, _gen(s)) for s in (1, 1, 2))
    torch.testing.assert_close(a[0], b[0])
    assert a[2] == b[2] and not torch.equal(a[0], c[0])
