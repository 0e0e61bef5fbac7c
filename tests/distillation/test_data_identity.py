"""Caches key on the data's content, and a run folder reused for another method or dataset drops what it left."""

import os

import numpy as np
from PIL import Image

from d3hr.cli import main
from d3hr.config import DataConfig
from d3hr.data import load_raw
from d3hr.data.identity import fingerprint
from d3hr.utils.io import load_tensors, read_json
from tests.conftest import FAST_TRAIN

FAST = [a for kv in FAST_TRAIN for a in ("--set", kv)]


def _folder(root, classes=("a", "b", "c"), n=8, seed=0):
    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("test", 2)):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(
                    root / split / c / f"{i}.png")
    return root


def _distill(data, out, *extra):
    return main(["distill", "--dataset", "imagefolder", "--root", str(data), "--ipc", "2", *FAST, *extra,
                 "--out", str(out)])


def test_fingerprint_levels(tmp_path):
    data = _folder(tmp_path / "d")
    cfg = DataConfig("imagefolder", root=str(data))
    prints = {m: fingerprint(load_raw(cfg), m) for m in ("sample", "full", "trust")}
    victim = data / "train" / "b" / "3.png"
    st = victim.stat()
    Image.fromarray(np.full((8, 8), 7, np.uint8), mode="L").save(victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # same name and time: only the bytes changed
    after = {m: fingerprint(load_raw(cfg), m) for m in ("sample", "full", "trust")}
    assert after["sample"] != prints["sample"] and after["full"] != prints["full"]  # every file of a small set
    assert after["trust"] == prints["trust"]  # paths only, by the user's choice
    (data / "train" / "a" / "9.png").write_bytes(victim.read_bytes())
    assert fingerprint(load_raw(cfg), "trust") != after["trust"]


def test_replaced_images_are_not_served_from_the_cache(tmp_path, capsys):
    data = _folder(tmp_path / "d")
    assert _distill(data, tmp_path / "one") == 0
    for f in sorted((data / "train").rglob("*.png")):  # every training image replaced under the same name
        Image.fromarray(np.full((8, 8), 200, np.uint8) - np.asarray(Image.open(f)) // 4, mode="L").save(f)
    capsys.readouterr()
    assert _distill(data, tmp_path / "two") == 0
    one, two = read_json(tmp_path / "one" / "stages.json"), read_json(tmp_path / "two" / "stages.json")
    assert one["generator"]["key"] != two["generator"]["key"] and "from_cache" not in two["invert"]
    s1, _ = load_tensors(tmp_path / "one" / "stats.safetensors")
    s2, _ = load_tensors(tmp_path / "two" / "stats.safetensors")
    assert not np.allclose(s1["mean"].numpy(), s2["mean"].numpy())


def test_a_new_class_folder_retrains_instead_of_blaming_the_class_map(tmp_path):
    data = _folder(tmp_path / "d")
    assert _distill(data, tmp_path / "one") == 0
    _folder(data, classes=("d",), seed=1)
    assert _distill(data, tmp_path / "two") == 0
    assert len([p for p in (tmp_path / "two" / "images").iterdir() if p.is_dir()]) == 4


def test_switching_method_then_dataset_drops_what_no_longer_belongs(tmp_path):
    run = tmp_path / "run"
    assert main(["distill", "--dataset", "digits", "--ipc", "2", *FAST, "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--labels", "hard", "--seeds", "1", "--epochs", "1"]) == 0
    assert (run / "stats.safetensors").is_file() and (run / "eval" / "results.json").is_file()
    assert main(["distill", "--method", "random-real", "--ipc", "2", "--out", str(run)]) == 0
    manifest = read_json(run / "manifest.json")
    assert not (run / "stats.safetensors").exists() and "stats.safetensors" not in manifest["files"]
    assert "invert" not in read_json(run / "stages.json") and not (run / "eval").exists()
    data = _folder(tmp_path / "d")
    assert main(["evaluate", str(run), "--labels", "hard", "--seeds", "1", "--epochs", "1"]) == 0
    assert main(["distill", "--dataset", "imagefolder", "--root", str(data), "--method", "random-real", "--ipc", "2",
                 "--out", str(run)]) == 0
    assert not (run / "eval").exists() and read_json(run / "manifest.json")["dataset"]["name"] == "imagefolder"
