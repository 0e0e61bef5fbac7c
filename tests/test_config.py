import pytest
import yaml

from d3hr.config import Config, load_config, nest, parse_override
from d3hr.errors import D3HRError


def test_defaults_are_the_papers():
    cfg = Config()
    assert cfg.select.weights == [1.0, 1.0, 0.5]
    assert (cfg.diffusion.num_steps, cfg.diffusion.inversion_steps) == (50, 31)
    assert cfg.diffusion.guidance_scale is None  # resolved per generator by the run
    assert cfg.diffusion.encode == "mean" and cfg.select.method == "d3hr"


def test_guidance_resolves_per_generator(tmp_path):
    from d3hr.distillation.pipeline import Run
    from d3hr.generator import build_small, save_generator

    assert Run(load_config(None, [nest("out", str(tmp_path))])).cfg.diffusion.guidance_scale == 1.0
    save_generator(build_small(10, 1, 8, [8, 16], 4, 1, 1, 2, 8, 1), tmp_path / "pretrained")
    pre = load_config(None, [nest("out", str(tmp_path)), nest("generator.path", str(tmp_path / "pretrained"))])
    assert Run(pre).cfg.diffusion.guidance_scale == 4.0
    explicit = load_config(None, [nest("out", str(tmp_path)), nest("diffusion.guidance_scale", 2.5)])
    assert Run(explicit).cfg.diffusion.guidance_scale == 2.5


def test_yaml_round_trip_and_overrides(tmp_path):
    cfg = load_config(None, [nest("select.ipc", 3), nest(*parse_override("diffusion.guidance_scale=1.5"))])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg and again.select.ipc == 3 and again.diffusion.guidance_scale == 1.5
    assert load_config(None, [nest(*parse_override("select.weights=[1, 0, 0]"))]).select.weights == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("override,message", [
    ("select.ipcc=3", "unknown config key 'select.ipcc'; did you mean 'select.ipc'?"),
    ("diffusion.guidance_scale=-1", "diffusion.guidance_scale must be >= 0"),
    ("select.ipc=abc", "config 'select.ipc' must be an integer"),
    ("select.ipc=2.5", "config 'select.ipc' must be an integer"),
    ("diffusion.inversion_steps=50", "must be in [0, num_steps=50)"),
    ("select.weights=[1, 2]", "select.weights must have 3 values"),
    ("select=3", "config section 'select' must be a mapping"),
])
def test_bad_values_give_one_line_errors(override, message):
    with pytest.raises(D3HRError) as exc:
        load_config(None, [nest(*parse_override(override))])
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("select: [unclosed")
    with pytest.raises(D3HRError, match="is not valid YAML"):
        load_config(p)
    p.write_text(yaml.safe_dump({"selct": {"ipc": 1}}))
    with pytest.raises(D3HRError, match="did you mean 'select'"):
        load_config(p)


def test_eval_config_yaml_overrides_and_typo_hints(tmp_path):
    from d3hr.config import EvalConfig, load_eval_config

    path = tmp_path / "eval.yaml"
    path.write_text("student: resnet18\nlabels: hard\nepochs: 40\n")
    cfg = load_eval_config(path, [nest("epochs", 7), nest(*parse_override("augment=false"))])
    assert (cfg.student, cfg.labels, cfg.epochs, cfg.augment, cfg.seeds) == ("resnet18", "hard", 7, False, 3)
    assert load_eval_config(None, [yaml.safe_load(cfg.to_yaml())]) == cfg  # round trip
    assert EvalConfig().to_dict()["recipe"] is None
    with pytest.raises(D3HRError, match="unknown config key 'seed'; did you mean 'seeds'"):
        load_eval_config(None, [nest("seed", 2)])
    with pytest.raises(D3HRError, match="labels must be soft or hard, got 'both'"):
        load_eval_config(None, [nest("labels", "both")])
