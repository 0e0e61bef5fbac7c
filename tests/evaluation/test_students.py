"""Every registered student builds and runs on small grayscale and RGB images (as timm tests every model)."""

from __future__ import annotations

import pytest
import torch

from d3hr.errors import D3HRError
from d3hr.evaluation import create_student, list_students
from d3hr.evaluation.students import ConvNet


@pytest.mark.parametrize("channels,size", [(1, 8), (1, 28), (3, 32)])
@pytest.mark.parametrize("name", list_students())
def test_every_student_runs(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = create_student(name, num_classes=7, channels=channels, image_size=size)
    model.train()
    logits = model(torch.randn(2, channels, size, size))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    logits.sum().backward()


def test_convnet_depth_adapts_to_small_images() -> None:
    assert ConvNet(10, 1, 8, depth=3).depth == 3  # 8 -> 4 -> 2 -> 1
    assert ConvNet(10, 1, 4, depth=3).depth == 2  # capped: instance norm needs >= 2x2 positions
    assert ConvNet(10, 3, 32, depth=3).classifier.in_features == 128 * 4 * 4
    norms = [m for m in ConvNet(10, 3, 32).modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 3 and all(n.num_groups == n.num_channels == 128 for n in norms)  # instance norm


def test_resnet18_small_stem() -> None:
    model = create_student("resnet18", 10, 3, 32)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert create_student("resnet18", 10, 3, 224).conv1.kernel_size == (7, 7)


def test_vgg11_pads_small_images_to_a_multiple_of_32() -> None:
    from d3hr.evaluation.students import SmallVGG

    model = create_student("vgg11", 10, 1, 28)
    assert isinstance(model, SmallVGG) and model.features[0].padding == (2, 2, 2, 2)  # 28 -> 32, as DC pads MNIST
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]  # configuration A
    assert model.classifier.in_features == 512  # five poolings: 32 -> 1
    assert create_student("vgg11", 10, 3, 64).classifier.in_features == 512 * 2 * 2
    assert create_student("vgg11", 10, 3, 27).features[0].padding == (2, 3, 2, 3)  # odd: one more on the far side
    assert not isinstance(create_student("vgg11", 10, 3, 96), SmallVGG)  # torchvision's above 64 px


def test_torchvision_fallback_takes_grayscale() -> None:
    model = create_student("mobilenet_v3_small", 5, 1, 32).eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)


def test_unknown_student_suggests_a_name() -> None:
    with pytest.raises(D3HRError, match="did you mean 'resnet18'"):
        create_student("resnet-18", 10, 3, 32)
