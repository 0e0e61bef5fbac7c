"""A tiny random DiT + VAE in the facebook/DiT-XL-2-256 diffusers layout (1000 labels, learned sigma), loaded by
--generator and used on an ImageNet-style folder of wnid classes through the built-in class map."""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel
from PIL import Image

from d3hr.cli import main
from d3hr.config import load_config
from d3hr.distillation.pipeline import Run
from d3hr.generator.model import SMALL_SCHEDULE

WNIDS = {"n01440764": 0, "n01443537": 1, "n15075141": 999}  # tench, goldfish, toilet tissue


@pytest.fixture(scope="module")
def dit_xl_layout(tmp_path_factory):
    """The hub repository's layout and configs, scaled down: 3-channel VAE with 8x downsampling in the real one
    (2x here), DiT with patch 2, out_channels 2 * in_channels, 1000 class embeddings (+1 null)."""
    root = tmp_path_factory.mktemp("DiT-XL-2-256")
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=16, scaling_factor=0.18215)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=1000)
    vae.save_pretrained(root / "vae", safe_serialization=True)
    dit.save_pretrained(root / "transformer", safe_serialization=True)
    DDIMScheduler(**SMALL_SCHEDULE, clip_sample=False).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "DiTPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
        "transformer": ["diffusers", "DiTTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}))
    return root


def _imagenet_folder(root, classes, per_class=(6, 2)):
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for wnid in classes:
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):  # JPEG-sized oddities: not square, not the generator's size
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                    root / split / wnid / f"{wnid}_{i}.JPEG", format="JPEG")
    return root


ARGS = ["--dataset", "imagefolder", "--class-map", "imagenet", "--ipc", "2", "--set", "select.candidates=64",
        "--set", "diffusion.num_steps=10", "--set", "diffusion.inversion_steps=3", "--set", "generate.save_size=12"]


def test_distill_with_dit_xl_layout_and_imagenet_class_map(dit_xl_layout, tmp_path):
    data = _imagenet_folder(tmp_path / "imagenet", WNIDS)
    run = tmp_path / "run"
    assert main(["distill", *ARGS, "--root", str(data), "--generator", str(dit_xl_layout), "--out", str(run)]) == 0
    pngs = sorted((run / "images").rglob("*.png"))
    assert len(pngs) == 3 * 2
    assert {Image.open(p).size for p in pngs} == {(12, 12)}  # saved at generate.save_size
    assert Image.open(pngs[0]).mode == "RGB"
    cfg = load_config(run / "config.yaml")
    assert cfg.diffusion.guidance_scale == 4.0  # the authors' scale is the default for a pretrained generator
    r = Run(cfg)
    gen = r.generator()
    assert gen.num_labels == 1000 and gen.latent_shape == (4, 8, 8)  # images encoded at the VAE's 16 px
    assert r.class_labels(gen).tolist() == list(WNIDS.values())


def test_classes_without_an_imagenet_index_are_named(dit_xl_layout, tmp_path, capsys):
    data = _imagenet_folder(tmp_path / "imagenet", ["n01440764", "my_cats", "my_dogs"])
    rc = main(["distill", *ARGS, "--root", str(data), "--generator", str(dit_xl_layout), "--out", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "d3hr: error: class map 'imagenet' has no label index for 2 classes: my_cats, my_dogs"
    assert not (tmp_path / "r" / "stats.safetensors").exists()


@pytest.fixture(scope="module")
def dit_xl_256(tmp_path_factory):
    """DiT-XL-2-256 at its real shapes, with tiny widths: VAE x8 (4 blocks) at 256 px, DiT on 4x32x32 latents."""
    root = tmp_path_factory.mktemp("DiT-XL-2-256-shapes")
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(4, 4, 4, 4), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=256, scaling_factor=0.18215)
    dit = DiTTransformer2DModel(num_attention_heads=1, attention_head_dim=8, in_channels=4, out_channels=8,
                                num_layers=1, sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
    vae.save_pretrained(root / "vae", safe_serialization=True)
    dit.save_pretrained(root / "transformer", safe_serialization=True)
    DDIMScheduler(**SMALL_SCHEDULE, clip_sample=False).save_pretrained(root / "scheduler")
    return root


def _photo_folder(root, classes, sizes=((256, 256), (300, 200), (200, 300)), per_class=(3, 1)):
    rng = np.random.default_rng(1)
    for split, n in zip(("train", "val"), per_class):
        for wnid in classes:
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                w, h = sizes[i % len(sizes)]
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                    root / split / wnid / f"{wnid}_{i}.JPEG", format="JPEG")
    return root


@pytest.mark.parametrize("save_size", [None, 224])
def test_pretrained_256_generator_encodes_saves_and_evaluates_at_real_shapes(dit_xl_256, tmp_path, monkeypatch,
                                                                               save_size):
    from d3hr.evaluation import runner
    from d3hr.generator.model import Generator

    seen, built = [], []
    encode = Generator.encode
    monkeypatch.setattr(Generator, "encode",
                        lambda self, x, **kw: seen.append(tuple(x.shape)) or encode(self, x, **kw))
    create = runner.create_student
    monkeypatch.setattr(runner, "create_student",
                        lambda name, n, c, size: built.append(size) or create(name, n, c, size))
    data = _photo_folder(tmp_path / "photos", list(WNIDS))
    run = tmp_path / "run"
    extra = [] if save_size is None else ["--set", f"generate.save_size={save_size}"]
    assert main(["distill", "--dataset", "imagefolder", "--class-map", "imagenet", "--ipc", "2", "--set",
                 "select.candidates=64", "--set", "diffusion.num_steps=10", "--set", "diffusion.inversion_steps=3",
                 *extra, "--root", str(data), "--generator", str(dit_xl_256), "--out", str(run)]) == 0
    assert seen and {s[1:] for s in seen} == {(3, 256, 256)}  # the encoder sees the generator's own 256 px
    side = save_size or 256
    pngs = sorted((run / "images").rglob("*.png"))
    assert len(pngs) == 6 and {Image.open(p).size for p in pngs} == {(side, side)}
    cfg = load_config(run / "config.yaml")
    assert (cfg.data.image_size, cfg.data.resolution, cfg.data.channels) == (256, 256, 3)
    assert cfg.generate.save_size == save_size
    assert main(["evaluate", str(run), "--labels", "hard", "--seeds", "1", "--epochs", "1"]) == 0
    assert built == [side]  # the student trains and tests at the saved size
