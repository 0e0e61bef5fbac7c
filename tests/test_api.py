"""The Python API has the CLI's stage names and writes the same run folder."""

import d3hr
from d3hr.config import nest, parse_override
from d3hr.utils.io import load_tensors
from tests.conftest import FAST_TRAIN


def _cfg(out, **kw):
    items = [nest(*parse_override(s)) for s in FAST_TRAIN]
    cfg = d3hr.load_config(None, items)
    cfg.out = str(out)
    return d3hr.load_config(None, [nest(k.replace("__", "."), v) for k, v in kw.items()], base=cfg)


def test_api_stages_and_load_run(tmp_path):
    cfg = _cfg(tmp_path / "run", select__ipc=2)
    assert d3hr.train_generator(cfg).is_dir()
    stats = d3hr.invert(cfg)
    assert stats.name == "stats.safetensors"
    summary = d3hr.distill(cfg)
    assert summary["images"].endswith("images") and summary["stages"]["select"]["key"]
    run = d3hr.load_run(tmp_path / "run")
    assert run["config"].select.ipc == 2 and run["config"].diffusion.guidance_scale == 1.0  # resolved, written
    tensors, meta = run["selection"]
    assert tensors["latents"].shape[:2] == (10, 2) and meta["ipc"] == 2
    assert run["manifest"]["ipc"] == 2
    group = (tmp_path / "run" / "selection.safetensors").read_bytes()
    rs = d3hr.select(cfg, select__method="base-rs", out=str(tmp_path / "run"))
    assert rs == tmp_path / "run" / "selection.safetensors" and rs.read_bytes() != group  # rewritten, by Base-RS:
    tensors, meta = load_tensors(rs)
    assert meta["strategy"] == "random" and tensors["index"].tolist() == [0] * 10  # candidate 0 of each class
