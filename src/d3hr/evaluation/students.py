"""Student networks by name (like timm's ``create_model``): small-image nets registered here, torchvision otherwise."""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch
from torch import nn

from d3hr.errors import D3HRError

Factory = Callable[[int, int, int], nn.Module]  # (num_classes, channels, image_size) -> module
STUDENTS: dict[str, Factory] = {}
SMALL_STEM_MAX = 64  # images up to this side get the 3x3 stride-1 ResNet stem without max-pooling


def register_student(name: str) -> Callable[[Factory], Factory]:
    """Decorator: register ``fn(num_classes, channels, image_size)`` under ``name``."""

    def deco(fn: Factory) -> Factory:
        STUDENTS[name] = fn
        return fn

    return deco


def list_students() -> list[str]:
    """Names of the registered students (any other torchvision classification model works too)."""
    return sorted(STUDENTS)


def check_student(name: str) -> None:
    """Raise a one-line error unless ``name`` is a registered student or a torchvision classification model."""
    import torchvision

    if name in STUDENTS:
        return
    tv_names = torchvision.models.list_models(module=torchvision.models)
    if name not in tv_names:
        near = difflib.get_close_matches(name, list(STUDENTS) + tv_names, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else f"; registered: {', '.join(list_students())}"
        raise D3HRError(f"unknown student '{name}'{hint}")


def create_student(name: str, num_classes: int, channels: int, image_size: int) -> nn.Module:
    """A freshly initialised student: a registered name, else a torchvision model name (for large images)."""
    check_student(name)
    if name in STUDENTS:
        return STUDENTS[name](num_classes, channels, image_size)
    import torchvision

    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return model if channels == 3 else _RepeatChannels(model)


class _RepeatChannels(nn.Module):
    """Feed grayscale images to an RGB torchvision model by repeating the channel."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.expand(-1, 3, -1, -1))  # (B, 1, H, W) -> (B, 3, H, W)


class ConvNet(nn.Module):
    """ConvNet-D (Gidaris & Komodakis; the dataset-distillation standard): D blocks of conv3x3 (width 128),
    instance norm (GroupNorm with one group per channel, affine), ReLU and 2x2 average pooling, then a linear layer.

    On a small image the depth is capped at floor(log2(image_size)) blocks, so that every instance norm sees at
    least 2x2 positions and the last feature map is at least 1x1: 8x8 digits get all 3 blocks (8 -> 4 -> 2 -> 1),
    a 4x4 image would get 2.
    """

    def __init__(self, num_classes: int, channels: int, image_size: int, depth: int = 3, width: int = 128):
        super().__init__()
        self.depth = max(1, min(depth, image_size.bit_length() - 1))
        layers: list[nn.Module] = []
        size, c_in = image_size, channels
        for _ in range(self.depth):
            layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.GroupNorm(width, width, affine=True),
                       nn.ReLU(inplace=True), nn.AvgPool2d(2, 2)]
            size, c_in = size // 2, width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))  # (B, width, s, s) -> (B, width * s * s)


@register_student("convnet")
def convnet(num_classes: int, channels: int, image_size: int) -> nn.Module:
    """ConvNet-3, width 128, instance norm (CIFAR-size images)."""
    return ConvNet(num_classes, channels, image_size, depth=3)


@register_student("convnet_d4")
def convnet_d4(num_classes: int, channels: int, image_size: int) -> nn.Module:
    """ConvNet-4 (Tiny-ImageNet-size images)."""
    return ConvNet(num_classes, channels, image_size, depth=4)


@register_student("convnet_d5")
def convnet_d5(num_classes: int, channels: int, image_size: int) -> nn.Module:
    """ConvNet-5 (128x128 ImageNet subsets)."""
    return ConvNet(num_classes, channels, image_size, depth=5)


@register_student("resnet18")
def resnet18(num_classes: int, channels: int, image_size: int) -> nn.Module:
    """torchvision ResNet-18; up to 64x64 images a 3x3 stride-1 stem without max-pooling (as for CIFAR)."""
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if image_size <= SMALL_STEM_MAX:
        model.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif channels != 3:
        model.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
    return model


VGG11_LAYERS = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")  # configuration A: 8 convolutions


class SmallVGG(nn.Module):
    """VGG for small images as the dataset-distillation literature evaluates it across architectures (DC / DSA's
    ``VGG11``): each convolution 3x3 with instance norm (one group per channel) and ReLU, 2x2 max-pooling at each
    "M", one linear layer on the flattened last map. Five poolings need a side that is a multiple of 32, so the image
    is first zero-padded to the next one (28 -> 32, which DC does for MNIST with a padding of 3 in the first
    convolution; 8 -> 32): the last map is 512 x (side / 32)^2."""

    def __init__(self, num_classes: int, channels: int, image_size: int, layers: tuple = VGG11_LAYERS):
        super().__init__()
        side = -(-image_size // 32) * 32
        extra = side - image_size
        modules: list[nn.Module] = [nn.ZeroPad2d((extra // 2, extra - extra // 2, extra // 2, extra - extra // 2))]
        c_in = channels
        for v in layers:
            if v == "M":
                modules.append(nn.MaxPool2d(2, 2))
                side //= 2
            else:
                modules += [nn.Conv2d(c_in, v, 3, padding=1), nn.GroupNorm(v, v, affine=True), nn.ReLU(inplace=True)]
                c_in = v
        self.features = nn.Sequential(*modules)
        self.classifier = nn.Linear(c_in * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))  # (B, 512, s, s) -> (B, 512 * s * s)


@register_student("vgg11")
def vgg11(num_classes: int, channels: int, image_size: int) -> nn.Module:
    """VGG-11: up to 64x64 images the small-image form (``SmallVGG``, instance norm); larger ones torchvision's
    vgg11 (whose five poolings and 7x7 adaptive pooling expect ImageNet-size images)."""
    if image_size <= SMALL_STEM_MAX:
        return SmallVGG(num_classes, channels, image_size)
    import torchvision

    model = torchvision.models.vgg11(weights=None, num_classes=num_classes)
    return model if channels == 3 else _RepeatChannels(model)

