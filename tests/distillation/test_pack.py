"""d3hr pack / unpack: a set packed into statistics and seeds regenerates byte-identical images; float16 skewness
makes the float32 choice; damaged, foreign or future packs are refused with one line.

The runs use a tiny random generator saved as a pretrained one (no training): the images are noise, but every byte
of them is a function of the statistics, the seeds and the generator, which is what is tested.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from d3hr.cli import main
from d3hr.distillation.group import chosen_candidates, group_latents, select_groups
from d3hr.distillation.pack import load_pack
from d3hr.distillation.unpack import ImagesDiffer, check_choice
from d3hr.errors import D3HRError
from d3hr.generator import build_small, save_generator
from d3hr.utils.io import load_tensors, read_json, save_tensors
from d3hr.utils.manifest import verify
from tests.conftest import TINY

IPC = 3
SETS = ["select.candidates=256", "diffusion.num_steps=10", "diffusion.inversion_steps=6", "data.limit=600"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(run: Path) -> dict[str, str]:
    return {p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((run / "images").rglob("*.png"))}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Two tiny random generators (seeds 0 and 1) in the diffusers layout, used as pretrained ones."""
    root = tmp_path_factory.mktemp("pack")
    for seed in (0, 1):
        torch.manual_seed(seed)
        save_generator(build_small(num_classes=10, channels=1, image_size=8, **TINY).eval(), root / f"gen{seed}")
    return root


def _distill(root: Path, method: str) -> Path:
    run = root / method
    if method == "d3hr-herd":  # it herds on the evaluation teacher: a cached 2-epoch one is used (the most epochs)
        from d3hr.config import DataConfig
        from d3hr.data import load_dataset
        from d3hr.evaluation.teacher import get_teacher

        data = DataConfig(name="digits", limit=600)
        get_teacher(data, load_dataset(data, "test"), "convnet", epochs=2)
    if not (run / "manifest.json").is_file():
        sets = [a for s in SETS for a in ("--set", s)]
        assert main(["distill", "--dataset", "digits", "--ipc", str(IPC), "--method", method, "--generator",
                     str(root / "gen0"), "--guidance", "1", "--out", str(run), *sets]) == 0
    return run


@pytest.fixture(scope="module")
def packed(root) -> Path:
    """The D3HR run, packed."""
    assert main(["pack", str(_distill(root, "d3hr")), "-o", str(root / "d3hr.d3hr")]) == 0
    return root / "d3hr.d3hr"


@pytest.mark.parametrize("method,form", [("d3hr", "statistics"), ("base-rs", "statistics"),
                                         ("random-real", "images"), ("kmeans-latent", "latents"),
                                         ("d3hr-herd", "latents")])
def test_pack_unpack_round_trip_is_byte_identical(root, method, form):
    import d3hr

    run = _distill(root, method)
    out = d3hr.pack(run, root / f"{method}.d3hr")
    assert out["form"] == form and out["images"] == 10 * IPC
    pack = load_pack(out["pack"])
    if form == "statistics":  # float32 where the latents need the bits, float16 where only the choice reads
        assert pack.tensors["mean"].dtype == pack.tensors["std"].dtype == torch.float32
        assert ("skewness" in pack.tensors) == (method == "d3hr") and "latents" not in pack.tensors
        if method == "d3hr":
            assert pack.tensors["skewness"].dtype == torch.float16
    report = d3hr.unpack(out["pack"], root / f"{method}-unpacked")
    again = root / f"{method}-unpacked"
    assert report["identical"] == 10 * IPC and report["differ"] == []
    assert _images(again) == _images(run)
    assert verify(again) == []  # an ordinary run folder: manifest, config, selection, images
    before, after = load_tensors(run / "selection.safetensors")[0], load_tensors(again / "selection.safetensors")[0]
    for name in ("latents", "index", "pool", "image_index", "count"):
        if name in before:
            assert torch.equal(before[name], after[name]), name  # the regenerated latents are bit-equal
    stages, original = read_json(again / "stages.json"), read_json(run / "stages.json")
    assert stages["generate"]["key"] == original["generate"]["key"]  # the same keys: the same set
    manifest = read_json(again / "manifest.json")
    assert manifest["method"] == method and manifest["dataset"] == read_json(run / "manifest.json")["dataset"]


def test_float16_skewness_makes_the_float32_choice_and_std_stays_float32(root, packed):
    """The proof behind the pack's dtypes, on digits statistics for five seeds: group sampling with the skewness
    rounded to float16 chooses the same candidate of every class as float32, and the latents redrawn from
    (seed, pool, index) are bit-equal to the selected ones. The std in float16 would move every latent."""
    stats, _ = load_tensors(root / "d3hr" / "stats.safetensors")
    mean, std, skew = stats["mean"], stats["std"], stats["skewness"]
    for seed in range(5):
        full = select_groups(mean, std, skew, IPC, 256, (1.0, 1.0, 0.5), seed)
        half = select_groups(mean, std, skew.half(), IPC, 256, (1.0, 1.0, 0.5), seed)
        assert torch.equal(full.index, half.index), seed
        z = chosen_candidates(seed, full.pool, full.index, IPC, mean.shape[1])
        assert torch.equal(group_latents(mean, std, z), full.x)
        assert not torch.equal(group_latents(mean, std.half(), z), full.x)
    assert check_choice(load_pack(packed)) == []  # and the pack's own statistics make its choice


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2**31), chunk=st.integers(1, 700), pools=st.sampled_from([None, 1, 2]),
       ipc=st.integers(1, 5), strategy=st.sampled_from(["group", "random"]))
def test_redrawn_candidates_equal_the_selection_at_any_chunk_size(seed, chunk, pools, ipc, strategy):
    """The candidate redraw of unpack equals what selection chose whatever chunk size scored the pools."""
    g = torch.Generator().manual_seed(seed)
    mean, std, skew = torch.randn(4, 12, generator=g), torch.rand(4, 12, generator=g) + 0.5, torch.randn(4, 12)
    sel = select_groups(mean, std, skew, ipc, 300, (1.0, 1.0, 0.5), seed, pools, chunk, strategy)
    z = chosen_candidates(seed, sel.pool, sel.index, ipc, 12)
    assert torch.equal(group_latents(mean, std, z), sel.x)


def test_two_processes_unpack_the_same_images(root, packed, tmp_path):
    """torchrun with 2 processes (gloo) regenerates the same bytes as one process (classes c on rank c mod 2)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "D3HR_QUIET": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "d3hr",
           "unpack", str(packed), "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _images(tmp_path / "two") == _images(root / "d3hr")
    assert read_json(tmp_path / "two" / "stages.json")["generate"]["processes"] == 2


# ----- refusals ----------------------------------------------------------------------------------------------------
def _rewrite(src: Path, dst: Path, tensors=None, **meta) -> Path:
    t, m = load_tensors(src)
    save_tensors(dst, {**t, **(tensors or {})}, {**m, **meta})
    return dst


def test_a_truncated_pack_is_refused(packed, tmp_path):
    cut = tmp_path / "cut.d3hr"
    cut.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    with pytest.raises(D3HRError, match=r"corrupt safetensors file .*cut\.d3hr"):
        load_pack(cut)


def test_tensors_of_the_wrong_shape_are_refused(packed, tmp_path):
    mean = load_tensors(packed)[0]["mean"]
    bad = _rewrite(packed, tmp_path / "bad.d3hr", {"mean": mean[:, :-1].contiguous()})
    with pytest.raises(D3HRError, match=r"tensor 'mean' is \(10, 63\) torch.float32, expected \(10, 64\)"):
        load_pack(bad)
    index = load_tensors(packed)[0]["index"].clone()
    index[0] = 256
    with pytest.raises(D3HRError, match=r"tensor 'index' holds candidates outside 0..255"):
        load_pack(_rewrite(packed, tmp_path / "bad.d3hr", {"index": index}))


def test_an_unknown_format_version_is_refused(packed, tmp_path, capsys):
    future = _rewrite(packed, tmp_path / "future.d3hr", format_version=2)
    assert main(["unpack", str(future), "--out", str(tmp_path / "run")]) == 2
    assert "pack format version 2 is unknown to d3hr" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(D3HRError, match="is not a d3hr pack"):
        load_pack(_rewrite(packed, tmp_path / "other.d3hr", format="something-else"))


def test_an_image_that_does_not_match_its_sha256_is_reported(packed, tmp_path, capsys):
    sha = load_tensors(packed)[0]["image_sha256"].clone()
    sha[4, 0] ^= 1  # the fifth image: class 1, image 1
    tampered = _rewrite(packed, tmp_path / "tampered.d3hr", {"image_sha256": sha})
    assert main(["unpack", str(tampered), "--out", str(tmp_path / "run")]) == 2
    out, err = capsys.readouterr()
    assert "images/1_1/00001.png: differs from the pack (thumbnail up to 0 gray levels apart)" in out
    assert "1 of 30 regenerated images differ from their packed sha256" in err
    with pytest.raises(ImagesDiffer) as info:
        import d3hr

        d3hr.unpack(tampered, tmp_path / "run")
    assert [d["image"] for d in info.value.report["differ"]] == ["images/1_1/00001.png"]


def test_images_made_with_other_kernels_name_them_as_the_likely_cause(packed, tmp_path, capsys):
    from d3hr.utils.dist import kernels

    meta = load_pack(packed).meta
    assert meta["generation"]["kernels"] == kernels("cpu") and kernels("cpu").startswith("cpu ")
    sha = load_tensors(packed)[0]["image_sha256"].clone()
    sha[0, 0] ^= 1
    elsewhere = _rewrite(packed, tmp_path / "elsewhere.d3hr", {"image_sha256": sha},
                         generation={**meta["generation"], "kernels": "cpu ELSEWHERE"})
    assert main(["unpack", str(elsewhere), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"made with cpu ELSEWHERE kernels, these with {kernels('cpu')}" in err and err.count("\n") == 1


def test_another_generator_is_refused_unless_forced(root, packed, tmp_path, capsys):
    import d3hr
    from d3hr.generator.model import generator_sha256

    ours, theirs = generator_sha256(root / "gen0"), generator_sha256(root / "gen1")
    assert ours == load_pack(packed).meta["generator"]["sha256"] and ours != theirs
    assert main(["unpack", str(packed), "--generator", str(root / "gen1"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ours in err and theirs in err and "--force" in err
    report = d3hr.unpack(packed, tmp_path / "run", generator=str(root / "gen1"), force=True)
    assert report["forced"] and len(report["differ"]) == report["images"] == 10 * IPC


def test_a_pack_of_training_images_checks_the_dataset(root, tmp_path):
    import d3hr

    pack = d3hr.pack(_distill(root, "random-real"), tmp_path / "rr.d3hr")["pack"]
    meta = load_tensors(pack)[1]
    other = _rewrite(Path(pack), tmp_path / "other.d3hr", dataset={**meta["dataset"], "sha256": "0" * 64})
    with pytest.raises(D3HRError, match=r"dataset 'digits' \(identity [0-9a-f]{64}\) is not the one .* \(0{64}\)"):
        d3hr.unpack(other, tmp_path / "run")


def test_pack_refuses_a_run_that_changed_since_its_manifest(root, tmp_path):
    import shutil

    import d3hr

    run = tmp_path / "run"
    shutil.copytree(_distill(root, "base-rs"), run)
    png = run / "images" / "0_0" / "00000.png"
    png.write_bytes(png.read_bytes() + b"\0")
    with pytest.raises(D3HRError, match=r"00000.png differs from its sha256 in the manifest; check the run"):
        d3hr.pack(run, tmp_path / "x.d3hr")
    assert not list(tmp_path.glob("*.d3hr"))


def test_a_packed_generator_path_that_is_not_here_asks_for_the_generator(packed, tmp_path):
    import d3hr

    gen = load_tensors(packed)[1]["generator"]
    moved = _rewrite(packed, tmp_path / "moved.d3hr", generator={**gen, "hint": "/elsewhere/generator"})
    with pytest.raises(D3HRError, match=f"/elsewhere/generator, which is not here; pass --generator .*{gen['sha256']}"):
        d3hr.unpack(moved, tmp_path / "run")
    assert d3hr.unpack(moved, tmp_path / "run", generator=gen["hint"])["differ"] == []


def test_evaluate_verify_and_report_accept_the_unpacked_folder(packed, tmp_path):
    import d3hr
    from d3hr.report import write_report

    run = Path(d3hr.unpack(packed, tmp_path / "run")["run"])
    assert verify(run) == []
    out = d3hr.evaluate(run, labels="hard", epochs=1, seeds=1)
    assert out["trained"] == 1 and 0 <= out["summary"]["top1_mean"] <= 1
    assert write_report(run).is_file()


def test_a_set_drawn_with_a_covariance_model_packs_as_latents_and_unpacks_identically(root):
    """x = mu + L z is kept as latents (no count in a group selection: ipc per class)."""
    import d3hr

    run = root / "d3hr-lowrank"
    sets = [a for s in (*SETS, "stats.covariance=lowrank:4") for a in ("--set", s)]
    assert main(["distill", "--dataset", "digits", "--ipc", str(IPC), "--method", "d3hr", "--generator",
                 str(root / "gen0"), "--guidance", "1", "--out", str(run), *sets]) == 0
    out = d3hr.pack(run, root / "lowrank.d3hr")
    pack = load_pack(out["pack"])
    assert out["form"] == "latents" and torch.equal(pack.tensors["count"], torch.full((10,), IPC))
    report = d3hr.unpack(out["pack"], root / "lowrank-unpacked")
    assert report["identical"] == 10 * IPC and _images(root / "lowrank-unpacked") == _images(run)
