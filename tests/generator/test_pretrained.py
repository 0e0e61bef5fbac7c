"""A generator in the diffusers layout, saved with save_pretrained, loads through --generator and distills."""

import json

import pytest
import torch

from d3hr.cli import main
from d3hr.errors import D3HRError
from d3hr.generator import load_generator


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


def test_distill_with_pretrained_generator(pretrained_dir, tmp_path):
    run = tmp_path / "run"
    rc = main(["distill", "--dataset", "digits", "--ipc", "2", "--generator", str(pretrained_dir), "--out", str(run),
               "--limit", "300", "--set", "select.candidates=64", "--set", "diffusion.num_steps=10", "--set",
               "diffusion.inversion_steps=4"])
    assert rc == 0
    assert len(list((run / "images").rglob("*.png"))) == 20
    pointer = json.loads((run / "generator.json").read_text())
    assert pointer["pretrained"] and pointer["path"] == str(pretrained_dir.resolve())
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("transformer"))


def test_missing_parts_and_pickles_are_refused(pretrained_dir, tmp_path):
    (pretrained_dir / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, pretrained_dir / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(D3HRError, match="cannot load generator"):
        load_generator(pretrained_dir)
    with pytest.raises(D3HRError, match="lacks transformer/config.json"):
        (tmp_path / "half" / "vae").mkdir(parents=True)
        (tmp_path / "half" / "vae" / "config.json").write_text("{}")
        load_generator(tmp_path / "half")
