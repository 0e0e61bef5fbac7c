import numpy as np
import pytest
import torch
from PIL import Image

from d3hr.config import DataConfig
from d3hr.data import fit_to_model, fit_to_saved, load_dataset, safe_class_dir
from d3hr.data.registry import FASHION_MNIST_DIR
from d3hr.errors import D3HRError


def test_digits_split_is_fixed_and_stratified():
    train, test = load_dataset(DataConfig("digits"), "train"), load_dataset(DataConfig("digits"), "test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.pixels.shape[1:] == (1, 8, 8) and train.pixels.dtype == torch.uint8
    assert int(train.pixels.max()) == 255
    assert train.class_counts().min() >= 139
    assert np.array_equal(load_dataset(DataConfig("digits"), "train").targets, train.targets)


def test_limit_caps_the_training_split():
    ds = load_dataset(DataConfig("digits", limit=100), "train")
    assert len(ds) == 100 and ds.pixels.shape[0] == 100


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_files():
    train = load_dataset(DataConfig("fashion-mnist"), "train")
    test = load_dataset(DataConfig("fashion-mnist"), "test")
    assert len(train) == 60000 and len(test) == 10000
    assert train.pixels.shape[1:] == (1, 28, 28)
    assert train.class_counts().tolist() == [6000] * 10
    assert train.classes[0] == "T-shirt/top" and safe_class_dir(train.classes[0]) == "T-shirt_top"


def test_fashion_mnist_missing_root_is_one_line_error(tmp_path):
    with pytest.raises(D3HRError, match="missing train-images-idx3-ubyte"):
        load_dataset(DataConfig("fashion-mnist", root=str(tmp_path)), "train")


def _make_folder(root, classes, n=3, size=12, mode="RGB"):
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.new(mode, (size + i, size), color=(i * 40) if mode == "L" else (i * 40, 0, 0)).save(
                    d / f"{i}.png")


def test_imagefolder_loads_resizes_and_orders_classes(tmp_path):
    _make_folder(tmp_path, ["b", "a"])
    ds = load_dataset(DataConfig("imagefolder", root=str(tmp_path), image_size=8), "train")
    assert ds.classes == ["a", "b"] and len(ds) == 6
    batch = ds.load([0, 5])
    assert batch.shape == (2, 3, 8, 8) and batch.dtype == torch.uint8


def test_imagefolder_errors_name_the_file_or_folder(tmp_path):
    _make_folder(tmp_path, ["a"])
    (tmp_path / "train" / "a" / "bad.png").write_bytes(b"not an image")
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(D3HRError, match=r"class folder .*empty has no images"):
        load_dataset(DataConfig("imagefolder", root=str(tmp_path)), "train")
    (tmp_path / "train" / "empty").rmdir()
    with pytest.raises(D3HRError, match=r"cannot read image .*bad\.png"):  # when its shape is surveyed, or read
        ds = load_dataset(DataConfig("imagefolder", root=str(tmp_path)), "train")
        ds.load(range(len(ds)))


def test_unknown_dataset():
    with pytest.raises(D3HRError, match="unknown dataset 'nope'; choose from digits"):
        load_dataset(DataConfig("nope"))


@pytest.mark.parametrize("name,expected", [("../x", "_x"), ("/etc/passwd", "_etc_passwd"), ("a\x00b", "a_b"),
                                           ("T-shirt/top", "T-shirt_top"), ("n01440764", "n01440764")])
def test_safe_class_dir_never_leaves_the_parent(name, expected):
    out = safe_class_dir(name)
    assert out == expected and "/" not in out and out not in (".", "..")


def test_pad_fit_round_trips_pixels_exactly():
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    x = fit_to_model(images, 32, "pad")
    assert x.shape == (3, 1, 32, 32) and float(x[..., 0, 0].max()) == -1.0
    assert torch.equal(fit_to_saved(x, 28, "pad"), images)
    assert fit_to_saved(x, 28, "pad", save_size=56).shape == (3, 1, 56, 56)


def test_truncated_jpeg_is_named(tmp_path):
    _make_folder(tmp_path, ["a"])
    jpg = tmp_path / "train" / "a" / "photo.jpg"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(jpg, quality=95)
    jpg.write_bytes(jpg.read_bytes()[:200])
    with pytest.raises(D3HRError, match=r"cannot read image .*photo\.jpg"):  # when surveyed, or read
        ds = load_dataset(DataConfig("imagefolder", root=str(tmp_path)), "train")
        ds.load(range(len(ds)))


def test_mixed_modes_make_a_color_set(tmp_path):
    _make_folder(tmp_path, ["a"], mode="L")
    for i, mode in enumerate(["RGBA", "RGBA", "P"]):
        Image.new(mode, (12, 12)).save(tmp_path / "train" / "a" / f"x{i}.png")
    ds = load_dataset(DataConfig("imagefolder", root=str(tmp_path), resolution=8), "train")
    assert ds.channels == 3  # not every image is grayscale
    assert ds.load(range(len(ds))).shape == (len(ds), 3, 8, 8)


def _write_idx(path, arr):
    import struct

    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(header + arr.tobytes())


def test_torchvision_mnist_from_a_local_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    ds = load_dataset(DataConfig("mnist", root=str(tmp_path)), "train")
    assert len(ds) == 30 and ds.pixels.shape == (30, 1, 28, 28) and ds.classes[0].startswith("0")
    assert ds.targets.tolist()[:3] == [0, 1, 2]
    assert len(load_dataset(DataConfig("mnist", root=str(tmp_path)), "test")) == 10


def test_torchvision_dataset_without_root_or_files(tmp_path):
    with pytest.raises(D3HRError, match="needs --root"):
        load_dataset(DataConfig("cifar10"), "train")
    with pytest.raises(D3HRError, match="pass --download"):
        load_dataset(DataConfig("cifar10", root=str(tmp_path)), "train")


def test_match_channels_repeats_gray_and_takes_luma_of_rgb():
    import torch

    from d3hr.data.images import match_channels

    gray = torch.rand(2, 1, 4, 4)
    rgb = match_channels(gray, 3)
    assert rgb.shape == (2, 3, 4, 4) and torch.equal(rgb[:, 2], gray[:, 0])
    torch.testing.assert_close(match_channels(rgb, 1), gray)  # luma weights sum to 1
    pure_red = torch.zeros(1, 3, 1, 1)
    pure_red[:, 0] = 1.0
    assert abs(float(match_channels(pure_red, 1)) - 0.299) < 1e-6
    with pytest.raises(D3HRError, match="cannot convert 2-channel images"):
        match_channels(torch.zeros(1, 2, 4, 4), 3)
