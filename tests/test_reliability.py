"""Interrupted runs resume to byte-identical files; concurrent runs are refused; manifests verify; disk-full is safe."""

import errno
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from d3hr.cli import main
from d3hr.errors import D3HRError
from d3hr.utils.folders import write_marker
from d3hr.utils.io import _umask, write_text
from tests.conftest import FAST_TRAIN

# Small work units so that a kill lands mid-stage: 12 inversion batches, checkpointed after each.
ARGS = ["--dataset", "digits", "--ipc", "4"] + [a for s in [*FAST_TRAIN, "diffusion.batch_size=50"]
                                               for a in ("--set", s)]


def _digests(run: Path) -> dict[str, str]:
    names = ["stats.safetensors", "selection.safetensors"] + [
        p.relative_to(run).as_posix() for p in sorted((run / "images").rglob("*.png"))]
    return {n: hashlib.sha256((run / n).read_bytes()).hexdigest() for n in names}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    assert main(["distill", *ARGS, "--out", str(run)]) == 0
    return run


def _kill_when(run: Path, ready, timeout: float = 300.0, args: list[str] = ARGS) -> None:
    """Start `d3hr distill` (with ``args``) in a subprocess and SIGKILL it as soon as ``ready(run)`` is true."""
    import shutil

    shutil.rmtree(Path(os.environ["D3HR_CACHE"]) / "stats", ignore_errors=True)  # make it really invert
    # Same thread count as this process: CPU kernels may round differently with another number of threads.
    env = {**os.environ, "D3HR_CHECKPOINT_SECONDS": "0", "D3HR_QUIET": "1",
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "d3hr", "distill", *args, "--out", str(run)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not ready(run):
        assert proc.poll() is None, "the run finished before it could be interrupted"
        assert time.time() - t0 < timeout
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_killed_during_inversion_resumes_identically(reference, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    _kill_when(run, lambda r: (r / "stats.partial.safetensors").is_file())
    assert not (run / "stats.safetensors").exists()
    monkeypatch.setenv("D3HR_QUIET", "0")
    assert main(["distill", *ARGS, "--out", str(run)]) == 0
    assert "[invert] resuming at round" in capsys.readouterr().err
    assert _digests(run) == _digests(reference)


def test_killed_during_inversion_resumes_identically_with_a_covariance(tmp_path, capsys, monkeypatch):
    """The partial file carries the co-moments and the kept latents: the class models come out the same."""
    args = [*ARGS, "--set", "stats.covariance=full"]
    assert main(["distill", *args, "--out", str(tmp_path / "ref")]) == 0
    run = tmp_path / "run"
    _kill_when(run, lambda r: (r / "stats.partial.safetensors").is_file(), args=args)
    monkeypatch.setenv("D3HR_QUIET", "0")
    assert main(["distill", *args, "--out", str(run)]) == 0
    assert "[invert] resuming at round" in capsys.readouterr().err
    assert _digests(run) == _digests(tmp_path / "ref")


def test_killed_during_generation_resumes_identically(reference, tmp_path):
    run = tmp_path / "run"

    def some_classes_done(r):
        partial = r / "images.partial"
        return partial.is_dir() and sum(p.is_dir() and not p.name.startswith(".") for p in partial.iterdir()) >= 2

    _kill_when(run, some_classes_done)
    assert not (run / "images").exists()
    assert main(["distill", *ARGS, "--out", str(run)]) == 0
    assert _digests(run) == _digests(reference)


def test_second_writer_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    write_marker(run, "run")  # the other process marked the folder as a run before locking it
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert main(["distill", *ARGS, "--out", str(run)]) == 2
    finally:
        os.close(fd)
    assert f"run folder {run} is in use by another d3hr process" in capsys.readouterr().err


def test_verify_reports_changed_missing_and_extra_files(reference, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(reference, run)
    assert main(["verify", str(run)]) == 0
    pngs = sorted((run / "images").rglob("*.png"))
    pngs[0].write_bytes(pngs[1].read_bytes())
    pngs[2].unlink()
    (pngs[3].parent / "99999.png").write_bytes(pngs[3].read_bytes())
    capsys.readouterr()
    assert main(["verify", str(run)]) == 1
    out = capsys.readouterr().out
    rel = [p.relative_to(run).as_posix() for p in pngs]
    assert f"{rel[0]}: sha256 differs from the manifest" in out
    assert f"{rel[2]}: missing" in out
    assert "99999.png: not in the manifest" in out


def test_short_class_is_an_error_unless_allowed(reference, tmp_path, capsys):
    args = [a if a != "data.limit=600" else "data.limit=40" for a in ARGS]
    assert main(["distill", *args, "--ipc", "5", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "has 3 training images, fewer than ipc=5" in err and "--allow-short-classes" in err
    assert not (tmp_path / "r" / "selection.safetensors").exists()
    assert main(["distill", *args, "--ipc", "5", "--allow-short-classes", "--out", str(tmp_path / "r")]) == 0
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["short_classes"] and all(n < 5 for n in manifest["short_classes"].values())


def test_disk_full_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    write_text(target, "old: 1\n")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(D3HRError, match=f"disk full while writing {target}; the previous version is intact"):
        write_text(target, "new: 2\n")
    monkeypatch.undo()
    assert target.read_text() == "old: 1\n"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary file left behind


def _tampered_copy(reference, tmp_path, name, change):
    """A copy of the reference run with one artifact rewritten by ``change`` and every later output removed."""
    import shutil

    from d3hr.utils.io import load_tensors, save_tensors

    run = tmp_path / "tampered"
    shutil.copytree(reference, run)
    tensors, meta = load_tensors(run / name)
    save_tensors(run / name, change(tensors), meta)
    later = {"stats.safetensors": ["selection.safetensors", "images"], "selection.safetensors": ["images"]}[name]
    for p in later:
        shutil.rmtree(run / p) if (run / p).is_dir() else (run / p).unlink()
    return run


def test_nan_statistics_are_refused(reference, tmp_path, capsys):
    def poison(t):
        t["std"][3, 5] = float("nan")
        return t

    run = _tampered_copy(reference, tmp_path, "stats.safetensors", poison)
    assert main(["distill", *ARGS, "--out", str(run)]) == 2
    assert "stats.safetensors: non-finite std for class '3'" in capsys.readouterr().err
    assert not (run / "selection.safetensors").exists()


def test_selection_of_the_wrong_shape_is_refused(reference, tmp_path, capsys):
    def reshape(t):
        t["latents"] = t["latents"].reshape(10, 4, 4, 2, 8)
        return t

    run = _tampered_copy(reference, tmp_path, "selection.safetensors", reshape)
    assert main(["generate", *ARGS, "--out", str(run)]) == 2
    assert "selection latents have shape (4, 2, 8) but the generator takes (4, 4, 4)" in capsys.readouterr().err
    assert not (run / "images").exists()


def test_generator_training_stopped_inside_an_epoch_resumes_identically(tmp_path, monkeypatch):
    """One epoch can outlast a session (the 500 VAE steps of Fashion-MNIST are half an epoch): with a checkpoint
    after every step, a stop inside the VAE's epoch and one inside the DiT's first epoch each resume where they
    stopped, to byte-identical weights."""
    from d3hr.generator import train as train_module

    args = ["train-generator", *ARGS, "--out", str(tmp_path / "run")]  # VAE: 9 batches of 570 images; DiT: 5 of 600
    monkeypatch.setenv("D3HR_CACHE", str(tmp_path / "ref-cache"))
    assert main(args) == 0
    monkeypatch.setenv("D3HR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("D3HR_CHECKPOINT_SECONDS", "0")
    real_save, saves, stops = train_module.save_checkpoint, [], [("vae", 0, 4), ("dit", 0, 3)]

    def save_then_stop(path, modules, opt, extra, generators=None):
        real_save(path, modules, opt, extra, generators=generators)
        saves.append((next(iter(modules)), extra["epoch"], extra["batches"]))
        if saves[-1] in stops:
            stops.remove(saves[-1])
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_stop)
    assert main(args) == 130 and saves[-1] == ("vae", 0, 4)
    assert main(args) == 130 and saves[-1] == ("dit", 0, 3)
    assert main(args) == 0
    # each run went on from the batch after the last checkpoint, not from the epoch's start
    assert saves[4] == ("vae", 0, 5) and ("dit", 0, 4) in saves and saves.count(("vae", 0, 1)) == 1
    [ref] = (tmp_path / "ref-cache" / "generators").iterdir()
    [new] = (tmp_path / "cache" / "generators").iterdir()
    for part in ("vae/diffusion_pytorch_model.safetensors", "transformer/diffusion_pytorch_model.safetensors"):
        assert (ref / part).read_bytes() == (new / part).read_bytes(), part


def test_killed_during_generator_training_resumes_identically(tmp_path, monkeypatch):
    """Generator training checkpoints every epoch; a resumed training saves byte-identical weights."""
    args = ["train-generator", *ARGS, "--set", "generator.dit.epochs=8"]
    monkeypatch.setenv("D3HR_CACHE", str(tmp_path / "ref-cache"))
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    monkeypatch.setenv("D3HR_CACHE", str(tmp_path / "cache"))
    env = {**os.environ, "D3HR_QUIET": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "d3hr", *args, "--out", str(tmp_path / "run")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "cache" / "generators"
    t0 = time.time()
    while not list(ckpts.glob("*.partial/dit.ckpt.safetensors")):
        assert proc.poll() is None, "training finished before it could be interrupted"
        assert time.time() - t0 < 300
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not [p for p in ckpts.iterdir() if not p.name.endswith(".partial")]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    [ref] = (tmp_path / "ref-cache" / "generators").iterdir()
    [new] = [p for p in ckpts.iterdir()]
    for part in ("vae/diffusion_pytorch_model.safetensors", "transformer/diffusion_pytorch_model.safetensors"):
        assert (ref / part).read_bytes() == (new / part).read_bytes(), part
