"""Shapes from the data or the generator: the inference rules, image modes, and the Tiny-ImageNet layout."""

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from d3hr.config import DEFAULT_DIT_STEPS, DEFAULT_VAE_STEPS, Config, DataConfig, load_config
from d3hr.data import load_dataset
from d3hr.data.images import read_image
from d3hr.data.shape import Survey, infer_shape, resolve_config, small_architecture, trained_side
from d3hr.errors import D3HRError


def _survey(sizes: dict, modes: dict, images: int | None = None) -> Survey:
    return Survey(Counter(sizes), Counter(modes), images or sum(sizes.values()))


@pytest.mark.parametrize("native,side", [(8, 8), (28, 32), (32, 32), (17, 24), (33, 48), (64, 64), (100, 64),
                                         (300, 64)])
def test_trained_side_rounds_up_to_what_the_vae_and_patches_take(native, side):
    assert trained_side(native) == side
    arch = small_architecture(side)
    factor = 2 ** (len(arch["block_out_channels"]) - 1)
    assert side % (factor * arch["patch_size"]) == 0


def test_small_architecture_keeps_the_sizes_tuned_on_digits_and_fashion_mnist():
    assert small_architecture(8) == {"block_out_channels": [32, 64], "patch_size": 1, "num_layers": 4,
                                     "attention_head_dim": 32}
    assert small_architecture(32) == {"block_out_channels": [32, 64, 64], "patch_size": 2, "num_layers": 6,
                                      "attention_head_dim": 64}


def test_grayscale_28px_folder_gets_a_32px_one_channel_generator_with_pad():
    shape = infer_shape(_survey({(28, 28): 4000}, {"L": 4000}))
    assert (shape.resolution, shape.channels, shape.image_size, shape.fit) == (28, 1, 32, "pad")
    assert shape.note == "[data] 4000 images, 28x28 L -> generator 32x32, 1 channel, fit pad"


def test_pretrained_generator_side_wins_and_photos_are_read_at_it():
    survey = _survey({(500, 375): 300, (375, 500): 100, (256, 256): 12}, {"RGB": 400, "L": 12}, images=1281167)
    shape = infer_shape(survey, generator_side=256, generator_channels=3)
    assert (shape.resolution, shape.channels, shape.image_size, shape.fit) == (256, 3, 256, "resize")
    assert "read at 256x256" in shape.note and "1281167 images" in shape.note and "headers of 412" in shape.note


def test_small_images_with_a_pretrained_generator_stay_small_and_gray():
    shape = infer_shape(_survey({(28, 28): 50}, {"L": 50}), generator_side=256, generator_channels=3)
    assert (shape.resolution, shape.channels, shape.image_size, shape.fit) == (28, 1, 256, "resize")
    assert "grayscale data with an RGB generator" in shape.note


def test_wildly_different_sizes_are_said_with_the_fit():
    shape = infer_shape(_survey({(20, 20): 5, (300, 200): 5}, {"RGB": 10}))
    assert shape.fit == "resize" and "differ by 10.0x" in shape.note and "'resize'" in shape.note


def test_given_values_are_kept():
    shape = infer_shape(_survey({(28, 28): 10}, {"L": 10}), resolution=20, channels=3, image_size=64, fit="pad")
    assert (shape.resolution, shape.channels, shape.image_size, shape.fit) == (20, 3, 64, "pad")


def test_resolve_config_fills_architecture_and_step_budgets():
    cfg = Config()
    cfg.data.name = "imagefolder"
    resolve_config(cfg, _survey({(28, 28): 40}, {"L": 40}))
    assert (cfg.data.resolution, cfg.data.channels, cfg.data.image_size, cfg.data.fit) == (28, 1, 32, "pad")
    assert cfg.generator.vae.block_out_channels == [32, 64, 64] and cfg.generator.dit.patch_size == 2
    assert (cfg.generator.vae.steps, cfg.generator.dit.steps) == (DEFAULT_VAE_STEPS, DEFAULT_DIT_STEPS)
    assert cfg.generator.vae.epochs is None


def test_a_size_the_vae_cannot_take_is_named():
    cfg = Config()
    cfg.data.image_size = 30
    with pytest.raises(D3HRError, match="data.image_size 30 cannot be taken .*try 32"):
        resolve_config(cfg, _survey({(28, 28): 4}, {"L": 4}))


def test_pretrained_generator_refuses_another_image_size():
    cfg = Config()
    cfg.data.image_size = 64
    with pytest.raises(D3HRError, match="data.image_size 64 differs from the pretrained generator's own side 256"):
        resolve_config(cfg, _survey({(300, 300): 4}, {"RGB": 4}), generator_side=256, generator_channels=3)


def test_steps_and_epochs_exclude_each_other():
    cfg = load_config(None, [{"generator": {"vae": {"steps": 500}}}])
    assert cfg.generator.vae.steps == 500
    cfg = load_config(None, [{"generator": {"vae": {"epochs": 3}}}], base=cfg)  # later epochs clear earlier steps
    assert (cfg.generator.vae.steps, cfg.generator.vae.epochs) == (None, 3)
    with pytest.raises(D3HRError, match="set generator.dit.steps or generator.dit.epochs, not both"):
        load_config(None, [{"generator": {"dit": {"steps": 5, "epochs": 2}}}])


@pytest.mark.parametrize("key,value", [("data.image_size", -8), ("data.image_size", 0), ("data.resolution", 0),
                                       ("data.channels", 2), ("generate.save_size", 0), ("generator.vae.steps", 0),
                                       ("data.fingerprint", "md5")])
def test_bad_shapes_and_budgets_are_one_line_errors(key, value):
    section, name = key.rsplit(".", 1)
    override: dict = {name: value}
    for part in reversed(section.split(".")):
        override = {part: override}
    with pytest.raises(D3HRError, match=key.replace(".", r"\.")):
        load_config(None, [override])


# ----- image modes ------------------------------------------------------------------------------------------------
def _save(tmp_path, name, im, **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1040).astype(np.uint16)  # 0 .. 65520
    path = _save(tmp_path, "g16.png", Image.fromarray(ramp))
    assert Image.open(path).mode == "I;16"
    got = read_image(path, 8, 1)[0].numpy().astype(int)
    assert np.abs(got - np.round(ramp / 257.0)).max() <= 1  # today's clipping made every pixel over 255 white
    assert got.min() == 0 and got.max() >= 250 and len(np.unique(got)) > 50


def test_32_bit_int_and_float_images(tmp_path):
    arr = (np.arange(64).reshape(8, 8) * 1000).astype(np.int32)
    got = read_image(_save(tmp_path, "i.tif", Image.fromarray(arr, mode="I")), 8, 1)[0].numpy()
    assert got.max() == round(63000 * 255 / 65535)
    f = _save(tmp_path, "f.tif", Image.fromarray(np.ones((8, 8), np.float32), mode="F"))
    with pytest.raises(D3HRError, match=r"f\.tif is 32-bit float \(PIL mode F\)"):
        read_image(f, 8, 1)


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert read_image(_save(tmp_path, "t.png", rgba), 4, 3).unique().tolist() == [255]
    la = Image.new("LA", (4, 4), (0, 128))  # black, half transparent
    assert read_image(_save(tmp_path, "la.png", la), 4, 1).unique().tolist() == [127]
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 0
    assert read_image(_save(tmp_path, "p.png", p, transparency=0), 4, 1).unique().tolist() == [255]


@pytest.mark.parametrize("mode,color,channels,expected", [
    ("1", 1, 1, [255]), ("CMYK", (0, 255, 255, 0), 3, [0, 255]), ("L", 77, 3, [77]),
    ("RGB", (255, 255, 255), 1, [255]), ("YCbCr", (128, 128, 128), 1, [128])])
def test_every_other_mode_converts(tmp_path, mode, color, channels, expected):
    ext = "jpg" if mode in ("CMYK", "YCbCr") else "png"
    im = Image.new(mode, (4, 4), color)
    out = read_image(_save(tmp_path, f"x.{ext}", im, **({"quality": 100} if ext == "jpg" else {})), 4, channels)
    assert out.shape == (channels, 4, 4)
    vals = sorted(out.unique().tolist())
    assert len(vals) == len(expected) and all(abs(v - e) <= 3 for v, e in zip(vals, expected))


# ----- Tiny-ImageNet ----------------------------------------------------------------------------------------------
def _tiny_imagenet(root, wnids=("n01443537", "n01440764"), per_class=3):
    rng = np.random.default_rng(0)
    rows = []
    for w in wnids:
        (root / "train" / w / "images").mkdir(parents=True)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                root / "train" / w / "images" / f"{w}_{i}.JPEG", format="JPEG")
    (root / "val" / "images").mkdir(parents=True)
    for i, w in enumerate([*wnids, wnids[0]]):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            root / "val" / "images" / f"val_{i}.JPEG", format="JPEG")
        rows.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    return root


def test_tiny_imagenet_layout_and_imagenet_class_map(tmp_path):
    from d3hr.data.classmap import load_class_map

    root = _tiny_imagenet(tmp_path / "tiny")
    train = load_dataset(DataConfig("tiny-imagenet", root=str(root)), "train")
    test = load_dataset(DataConfig("tiny-imagenet", root=str(root)), "test")
    assert train.classes == ["n01440764", "n01443537"] == test.classes  # sorted wnids
    assert train.class_counts().tolist() == [3, 3] and test.targets.tolist() == [1, 0, 1]
    assert (train.resolution, train.channels) == (64, 3)
    assert train.load([0]).shape == (1, 3, 64, 64) and test.load([2]).dtype == torch.uint8
    assert load_class_map("imagenet", train.classes, 1000) == [0, 1]


def test_tiny_imagenet_bad_annotation_is_named(tmp_path):
    root = _tiny_imagenet(tmp_path / "tiny")
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(D3HRError, match=r"val_annotations.txt:1: .*wnid of train/"):
        load_dataset(DataConfig("tiny-imagenet", root=str(root)), "test")
