"""A generator in the diffusers layout, saved with save_pretrained, loads through --generator and distills."""

import json
import shutil

import pytest
import torch
from diffusers import DDIMScheduler
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

from d3hr.cli import main
from d3hr.diffusion import make_alphas_cumprod
from d3hr.errors import D3HRError
from d3hr.generator import load_generator
from d3hr.generator.model import SMALL_SCHEDULE, generator_schedule


def test_save_and_load_round_trip(pretrained_dir, tiny_generator):
    assert (pretrained_dir / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert (pretrained_dir / "transformer" / "config.json").is_file()
    gen = load_generator(pretrained_dir)
    assert gen.num_labels == 10 and gen.latent_shape == (4, 4, 4) and gen.scaling_factor == 0.5
    for a, b in zip(gen.transformer.state_dict().values(), tiny_generator.transformer.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    z = gen.encode(x)
    torch.testing.assert_close(z, tiny_generator.vae.encode(x).latent_dist.mean * 0.5)


def test_distill_with_pretrained_generator(pretrained_dir, tmp_path, monkeypatch):
    """The run uses the given generator: nothing is trained, and no generator lands in the cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("D3HR_CACHE", str(cache))  # this test's own cache, so that what the run put there is seen
    run = tmp_path / "run"
    rc = main(["distill", "--dataset", "digits", "--ipc", "2", "--generator", str(pretrained_dir), "--out", str(run),
               "--limit", "300", "--set", "select.candidates=64", "--set", "diffusion.num_steps=10", "--set",
               "diffusion.inversion_steps=4"])
    assert rc == 0
    assert len(list((run / "images").rglob("*.png"))) == 20
    pointer = json.loads((run / "generator.json").read_text())
    assert pointer["pretrained"] and pointer["path"] == str(pretrained_dir.resolve())
    assert cache.is_dir()  # the run did use this cache (its statistics are there) ...
    assert not (cache / "generators").exists() and not list(cache.rglob("transformer"))  # ... but for no generator


def test_missing_parts_and_pickles_are_refused(pretrained_dir, tmp_path):
    (pretrained_dir / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, pretrained_dir / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(D3HRError, match="cannot load generator"):
        load_generator(pretrained_dir)
    with pytest.raises(D3HRError, match="lacks transformer/config.json"):
        (tmp_path / "half" / "vae").mkdir(parents=True)
        (tmp_path / "half" / "vae" / "config.json").write_text("{}")
        load_generator(tmp_path / "half")


SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def test_the_schedule_is_the_generators_own(pretrained_dir, monkeypatch, capsys):
    """alphas_cumprod from scheduler/scheduler_config.json; DiT's schedule, said on stderr, only without one."""
    DDIMScheduler(**SD_SCHEDULE, set_alpha_to_one=False).save_pretrained(pretrained_dir / "scheduler")
    gen = load_generator(pretrained_dir)
    assert gen.schedule == SD_SCHEDULE
    torch.testing.assert_close(gen.alphas_cumprod, make_alphas_cumprod(**SD_SCHEDULE), rtol=0, atol=0)
    shutil.rmtree(pretrained_dir / "scheduler")
    monkeypatch.delenv("D3HR_QUIET", raising=False)
    capsys.readouterr()
    assert load_generator(pretrained_dir).schedule == SMALL_SCHEDULE
    assert "has no scheduler config: using DiT's diffusion schedule" in capsys.readouterr().err


def test_a_scheduler_config_d3hr_cannot_follow_is_refused(pretrained_dir):
    DDIMScheduler(**SMALL_SCHEDULE, prediction_type="v_prediction").save_pretrained(pretrained_dir / "scheduler")
    with pytest.raises(D3HRError, match="prediction_type"):
        load_generator(pretrained_dir)
    (pretrained_dir / "scheduler" / "scheduler_config.json").write_text("{not json")
    with pytest.raises(D3HRError, match="cannot read the scheduler config"):
        generator_schedule(pretrained_dir)


def test_a_hub_ids_schedule_comes_from_the_hub(monkeypatch, tmp_path):
    """For a hub id the config is fetched like any hub file (hf_hub_download, replaced here: no network)."""
    DDIMScheduler(**SD_SCHEDULE).save_pretrained(tmp_path / "scheduler")
    asked = []

    def hub(repo_id, filename, subfolder=None, **kwargs):
        asked.append((repo_id, subfolder, filename))
        return str(tmp_path / "scheduler" / filename)

    monkeypatch.setattr("diffusers.configuration_utils.hf_hub_download", hub)
    assert generator_schedule("someone/dit-sd-schedule") == SD_SCHEDULE
    assert asked == [("someone/dit-sd-schedule", "scheduler", "scheduler_config.json")]

    def absent(*args, **kwargs):
        raise EntryNotFoundError("404: no such file in the repository")

    monkeypatch.setattr("diffusers.configuration_utils.hf_hub_download", absent)
    assert generator_schedule("someone/dit-without-scheduler") == SMALL_SCHEDULE

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("offline, and not in the cache")

    monkeypatch.setattr("diffusers.configuration_utils.hf_hub_download", offline)
    with pytest.raises(D3HRError, match="cannot read the scheduler config of generator someone/dit"):
        generator_schedule("someone/dit")


def test_the_weights_hash_reads_each_file_version_once(tiny_generator, tmp_path, monkeypatch):
    """generator_sha256 is asked by every run of a compare: a file is read once per process, and again only when it
    changed (size or mtime), which changes the hash."""
    from d3hr.generator import model, save_generator

    save_generator(tiny_generator, tmp_path / "gen")
    first = model.generator_sha256(tmp_path / "gen")
    reads = []
    monkeypatch.setattr(model, "sha256_file", lambda p: reads.append(p) or "0" * 64)
    assert model.generator_sha256(tmp_path / "gen") == first and reads == []  # remembered
    weights = next((tmp_path / "gen" / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b" ")  # another version of the file
    assert model.generator_sha256(tmp_path / "gen") != first and reads == [weights]
