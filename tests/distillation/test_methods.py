"""The method registry: a new method is one decorated function; each built-in method declares what it needs."""

import numpy as np
import pytest
import torch

from d3hr.cli import main
from d3hr.config import load_config
from d3hr.distillation.methods import METHODS, get_method, method_names, register_method
from d3hr.errors import D3HRError
from d3hr.utils.io import load_tensors, read_json


@pytest.fixture
def first_images():
    """A toy method registered for one test: the first IPC training images of each class."""
    from d3hr.distillation.select import _write_rows

    @register_method("first-images", needs_generator=False, needs_inversion=False, level="images",
                     key_fields=("select.ipc",))
    def first(ctx, out, key):
        """First images: the first IPC training images of each class."""
        if not ctx.world.is_main:
            return {}
        rows = [torch.as_tensor(np.flatnonzero(ctx.train_set.targets == c)[: ctx.cfg.select.ipc])
                for c in range(len(ctx.train_set.classes))]
        return _write_rows(ctx, out, key, rows, [], {"images": "the first of each class"})

    yield first
    METHODS.pop("first-images")


def test_a_new_method_is_one_decorated_function(first_images, tmp_path, capsys):
    assert main(["methods"]) == 0
    assert "first-images   First images: the first IPC training images of each class." in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["distill", "--dataset", "digits", "--method", "first-images", "--ipc", "2", "--out", str(run)]) == 0
    sel, meta = load_tensors(run / "selection.safetensors")
    assert meta["method"] == "first-images" and sel["image_index"][0].tolist() == [0, 10]  # digits 0 at 0 and 10
    stages = read_json(run / "stages.json")
    assert set(stages) == {"select", "generate"}  # no generator, no inversion: the spec says so
    assert read_json(run / "manifest.json")["method_details"] == {"images": "the first of each class"}


@pytest.mark.parametrize("name,generator,inversion,level", [
    ("d3hr", True, True, "K"), ("base-rs", True, True, "K"), ("random-real", False, False, "images"),
    ("herding", False, False, "images"), ("kmeans-latent", True, False, "0"), ("base-ddpm", True, False, "K")])
def test_built_in_methods_declare_what_they_need(name, generator, inversion, level):
    m = get_method(name)
    assert (m.needs_generator, m.needs_inversion, m.level) == (generator, inversion, level)
    assert "select.ipc" in m.key_fields and m.summary


def test_one_spelling_per_method_and_old_configs_still_load(tmp_path):
    assert method_names()[:2] == ["d3hr", "base-rs"]
    with pytest.raises(D3HRError, match="select.method must be one of d3hr, base-rs, .* got 'random'"):
        get_method("random")
    old = tmp_path / "config.yaml"
    old.write_text("select:\n  method: d3hr\n  strategy: random\n")  # a run folder written before the registry
    assert load_config(old).select.method == "base-rs"
    old.write_text("select:\n  method: d3hr\n  strategy: group\n")
    assert load_config(old).select.method == "d3hr"


def test_distillation_does_not_import_evaluation():
    import subprocess
    import sys

    code = ("import sys, d3hr.distillation.pipeline, d3hr.distillation.select\n"
            "print(sorted(m for m in sys.modules if m.startswith('d3hr.evaluation')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # herding's teacher is handed in by d3hr.api
