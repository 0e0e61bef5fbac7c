"""Fine-tuning a pretrained generator: weights change, a new label table, a loadable result, exact resume."""

import numpy as np
import pytest
import torch
from PIL import Image

import d3hr
from d3hr.cli import main
from d3hr.config import load_config, nest
from d3hr.errors import D3HRError
from d3hr.generator import finetune as finetune_module
from d3hr.generator import load_generator
from d3hr.utils.io import sha256_file


@pytest.fixture
def three_classes(tmp_path):
    """A 3-class grayscale ImageFolder (the pretrained generator has 10 labels)."""
    rng = np.random.default_rng(1)
    for split, n in (("train", 12), ("test", 2)):
        for c in ("circle", "square", "star"):
            (tmp_path / "shapes" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
                    tmp_path / "shapes" / split / c / f"{i}.png")
    return tmp_path / "shapes"


def _args(pretrained, data, out, epochs=2):
    return ["finetune", "--generator", str(pretrained), "--dataset", "imagefolder", "--root", str(data),
            "--image-size", "8", "--epochs", str(epochs), "--out", str(out), "--set", "generator.dit.batch_size=8"]


def test_finetune_new_label_table(pretrained_dir, three_classes, tmp_path):
    out = tmp_path / "tuned"
    assert main(_args(pretrained_dir, three_classes, out)) == 0
    base, tuned = load_generator(pretrained_dir), load_generator(out)
    assert tuned.num_labels == 3 and base.num_labels == 10
    emb = [m for m in tuned.transformer.modules() if type(m).__name__ == "LabelEmbedding"]
    assert emb and all(m.embedding_table.weight.shape[0] == 4 for m in emb)
    moved = [not torch.equal(a, b) for (name, a), b in zip(tuned.transformer.state_dict().items(),
                                                           base.transformer.state_dict().values())
             if "class_embedder" not in name]
    assert any(moved)
    assert all(torch.equal(a, b) for a, b in zip(tuned.vae.state_dict().values(), base.vae.state_dict().values()))
    assert tuned.info["classes"] == ["circle", "square", "star"] and len(tuned.info["dit_loss_per_epoch"]) == 2
    assert not out.with_name("tuned.partial").exists()
    # The fine-tuned generator distills the new dataset.
    run = tmp_path / "run"
    assert main(["distill", "--dataset", "imagefolder", "--root", str(three_classes), "--image-size", "8",
                 "--generator", str(out), "--ipc", "2", "--out", str(run), "--set", "select.candidates=64",
                 "--set", "diffusion.num_steps=10", "--set", "diffusion.inversion_steps=3"]) == 0
    assert len(list((run / "images").rglob("*.png"))) == 6


def test_interrupted_finetune_resumes_to_the_same_weights(pretrained_dir, three_classes, tmp_path, monkeypatch):
    assert main(_args(pretrained_dir, three_classes, tmp_path / "straight")) == 0
    real_save = finetune_module.train_dit.__globals__["save_checkpoint"]
    calls = []

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setitem(finetune_module.train_dit.__globals__, "save_checkpoint", save_then_stop)
    assert main(_args(pretrained_dir, three_classes, tmp_path / "resumed")) == 130
    assert calls == [1] and (tmp_path / "resumed.partial" / "dit.ckpt.safetensors").is_file()
    assert not (tmp_path / "resumed").exists()
    monkeypatch.undo()
    saved_epochs = []

    def save_and_count(path, modules, opt, extra, generators=None):
        saved_epochs.append(extra["epoch"])
        real_save(path, modules, opt, extra, generators=generators)

    monkeypatch.setitem(finetune_module.train_dit.__globals__, "save_checkpoint", save_and_count)
    assert main(_args(pretrained_dir, three_classes, tmp_path / "resumed")) == 0
    assert saved_epochs == [2]  # epoch 1 came from the checkpoint
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert sha256_file(tmp_path / "resumed" / weights) == sha256_file(tmp_path / "straight" / weights)


def test_finetune_needs_a_generator(three_classes, tmp_path):
    """finetune itself (not only the CLI's required flag) refuses a config without a generator, before any work."""
    cfg = load_config(None, [nest("data.name", "imagefolder"), nest("data.root", str(three_classes)),
                             nest("generator.dit.epochs", 1)])  # all but the generator given
    assert cfg.generator.path is None
    with pytest.raises(D3HRError, match=r"^finetune needs --generator"):
        d3hr.finetune(cfg, tmp_path / "o")
    assert not list(tmp_path.glob("o*"))  # neither OUT nor OUT.partial was made
