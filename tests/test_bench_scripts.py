"""The benchmark scripts run (their --quick smoke configurations) and print or write numbers that hang together.

Speeds are read by people, not asserted: the checks are on what the numbers must satisfy on any machine (counts,
signs, ratios consistent with the times they are computed from, agreements that do not depend on speed).
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(*args):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _rows(out: str, first_word: str) -> list[list[str]]:
    return [ln.split() for ln in out.splitlines() if ln.startswith(first_word)]


def test_group_sampling_quick():
    out = _run(str(BENCH / "group_sampling.py"), "--quick")
    rows = _rows(out, "D=128")
    assert len(rows) == 4  # D 128 x IPC 5, 10 x C 4, 32
    for r in rows:
        brute, own, shared, bnd_own, bnd_shr, brt_own, brt_shr, own_bnd, shr_bnd = map(float, r[4:13])
        assert all(math.isfinite(v) and v > 0 for v in (brute, own, shared, bnd_own, bnd_shr))
        # the ratios are the quotients of the printed times (to their 3 significant digits)
        for ratio, num, den in ((brt_own, brute, own), (brt_shr, brute, shared), (own_bnd, own, bnd_own),
                                (shr_bnd, shared, bnd_shr)):
            assert ratio == pytest.approx(num / den, rel=0.02)
        # no bound on the ratios themselves: they are timings, and a loaded machine makes any such bound flaky
        assert r[13:] == ["PASS", "own", "2/2,", "shared", "c0", "1/1"]  # the same group as the brute force
    assert out.rstrip().endswith("overall: PASS")


def test_diffusion_loops_quick():
    out = _run(str(BENCH / "diffusion_loops.py"), "--quick")
    table = [ln.split() for ln in out.splitlines() if ln.startswith(("batch-1 fp32", "batched 8 "))]
    assert [r[:3] for r in table] == [["batch-1", "fp32", "(authors'"], ["batched", "8", "fp32"],
                                      ["batched", "8", "bf16"]]
    # columns: invert lat/s, speed-up, generate lat/s, speed-up, zK vs fp32, z0 vs fp32
    base, fp32, bf16 = ([float(v.rstrip("x")) for v in r[-6:]] for r in table)
    assert all(v > 0 for row in (base, fp32, bf16) for v in row[:4])
    assert base[1] == base[3] == 1.0 and fp32[4] == fp32[5] == 0.0  # the references of the two columns
    assert base[4] < 1e-5 and base[5] < 1e-5  # batching changes fp32 results by rounding only
    assert 0 < bf16[4] < 0.05 and 0 < bf16[5] < 0.05  # bf16 drifts, a little
    trips = [float(ln.rsplit("=", 1)[1]) for ln in out.splitlines() if ln.startswith("round trip")]
    assert len(trips) == 2 and all(0 < e < 0.1 for e in trips)  # K = 3 of 50 on a random model: close


def test_cli_startup_measures_three_commands(tmp_path):
    out = _run(str(BENCH / "cli_startup.py"), "--repeats", "1", "--json", str(tmp_path / "t.json"))
    medians = json.loads((tmp_path / "t.json").read_text())
    assert list(medians) == ["--help", "verify RUN", "report RUN"]
    assert all(0 < t < 60 for t in medians.values())
    for name, t in medians.items():
        assert _rows(out, f"d3hr {name}")[0][-3] == f"{t:.2f}"  # the printed median is the one written


@pytest.mark.slow
def test_end_to_end_quick(tmp_path):
    _run(str(BENCH / "end_to_end.py"), "--quick", "--out", str(tmp_path), "--json", str(tmp_path / "e2e.json"))
    rows = json.loads((tmp_path / "e2e.json").read_text())["rows"]
    assert [r["images"] for r in rows] == [300, 600, 1200]
    for r in rows:
        assert all(r[f"{s}_s"] > 0 and r[f"{s}_peak_mb"] > 50 for s in ("invert", "select", "generate"))
        run = tmp_path / f"n{r['images']}" / "run"
        assert len(list((run / "images").rglob("*.png"))) == 50  # 10 classes x IPC 5
        assert json.loads((run / "stages.json").read_text())["invert"]["seconds"] == r["invert_s"]


def test_generator_ceiling_round_trips_real_runs_without_touching_them(tmp_path):
    import json

    from d3hr.cli import main
    from tests.conftest import FAST_TRAIN

    grid = tmp_path / "grid"
    sets = [a for s in FAST_TRAIN for a in ("--set", s)]
    assert main(["compare", "--dataset", "digits", "--methods", "d3hr,random-real", "--ipc", "2", "--seeds", "1",
                 "--labels", "soft", "--epochs", "2", "--out", str(grid), *sets]) == 0
    real = grid / "runs" / "random-real-ipc2-seed0"
    before = (real / "eval" / "results.json").read_bytes()
    out = _run(str(BENCH / "generator_ceiling.py"), "--generator-run", str(grid / "runs" / "d3hr-ipc2-seed0"),
               "--real", str(real), "--out", str(tmp_path / "ceiling"), "--epochs", "2")
    assert (real / "eval" / "results.json").read_bytes() == before  # the grid's record was reused, not rewritten
    ceiling = json.loads((tmp_path / "ceiling" / "ceiling.json").read_text())
    weights = json.loads((grid / "runs" / "d3hr-ipc2-seed0" / "stages.json").read_text())["generator"]["sha256"]
    assert ceiling["generator_sha256"] == weights
    table = ceiling["results"]
    assert set(table) == {"real", "vae", "ddim"} and "ddim" in out
    first = json.loads(before)["records"][0]["top1"]
    assert table["real"]["top1"] == [100 * first]
    for variant in ("vae", "ddim"):
        run = tmp_path / "ceiling" / "runs" / f"{variant}-ipc2-seed0"
        pngs = sorted((run / "images").rglob("*.png"))
        assert len(pngs) == 20  # 10 classes x IPC 2, as in the real run
        assert [p.read_bytes() for p in pngs] != [p.read_bytes() for p in sorted((real / "images").rglob("*.png"))]
        record = json.loads((run / "eval" / "results.json").read_text())["records"][0]
        assert record["epochs"] == 2 and record["generator_sha256"] == weights  # the round trip names its weights
    _run(str(BENCH / "generator_ceiling.py"), "--generator-run", str(grid / "runs" / "d3hr-ipc2-seed0"),
         "--real", str(real), "--out", str(tmp_path / "ceiling"), "--epochs", "2", "--variants", "vae")
    only = json.loads((tmp_path / "ceiling" / "ceiling.json").read_text())["results"]
    assert set(only) == {"vae"} and only["vae"]["top1"] == table["vae"]["top1"]  # the scored folder, kept
    out = _run(str(BENCH / "teacher_agreement.py"), str(real), str(grid / "runs" / "d3hr-ipc2-seed0"))
    rows = [ln.split() for ln in out.splitlines() if ln.startswith(("random-real-ipc2", "d3hr-ipc2"))]
    assert len(rows) == 2 and all(r[1] == "20" and 0 <= float(r[2].rstrip("%")) <= 100 for r in rows)


def test_invert_subsample_emulates_the_invert_stage(tmp_path):
    """bench/invert_subsample.py derives a setting's statistics from stored latents; where a real invert stage
    already wrote them (same key), it reports how far they are: the same counts, differences at float rounding."""
    import os

    from tests.conftest import FAST_TRAIN

    env_cache = Path(os.environ["D3HR_CACHE"])
    sets = [*FAST_TRAIN, "diffusion.inversion_steps=4", "invert.check_every=10"]
    real = ["-m", "d3hr", "distill", "--dataset", "digits", "--ipc", "2", "--seed", "1",
            *(a for s in [*sets, "invert.per_class=auto", "invert.tolerance=0.4", "invert.seed=1"]
              for a in ("--set", s)),
            "--out", str(tmp_path / "real")]
    _run(*real)
    common = ["--out", str(tmp_path / "scratch"), "--dataset", "digits", "--threads", "1", "--part", "256",
              "--levels", "2,4", "--level", "4", "--ipc", "2",
              *(a for s in sets for a in ("--set", s))]
    _run(str(BENCH / "invert_subsample.py"), "invert", *common)
    _run(str(BENCH / "invert_subsample.py"), "analyse", *common, "--seeds", "1", "--settings", "20,all,rule0.4",
         "--labels", "", "--results", str(tmp_path / "results"))
    rows = {r["setting"]: r for r in json.loads((tmp_path / "results" / "ipc2.json").read_text())["rows"]}
    assert rows["20"]["images"] == 200 and rows["all"]["images"] == 600
    assert rows["all"]["errors"]["mean_in_std"] == 0.0 and rows["20"]["errors"]["mean_in_std"] > 0
    check = rows["rule0.4"]["real_stage_check"]
    assert check is not None and check["count_equal"], check  # the real run's key was found in the cache
    assert max(check[n] for n in ("mean", "std", "skewness")) < 1e-4, check
    assert (tmp_path / "results" / "ipc2.md").is_file() and env_cache.is_dir()
    _run(str(BENCH / "invert_subsample.py"), "depth", *common, "--seeds", "1", "--tolerance-depth", "0.4",
         "--results", str(tmp_path / "results"))
    cases = json.loads((tmp_path / "results" / "depth-ipc2.json").read_text())["cases"]
    assert [c["images"] for c in cases][0] == 600 and all(c["chosen"] in (2, 4) for c in cases)


def test_invert_subsample_reads_real_runs_of_a_compare_folder(tmp_path):
    """The ``grid`` step: a compare whose D3HR cells sweep invert.per_class beside the default rule; every row
    reads the run's own statistics against the per_class=all run of its seed (errors 0 for all itself, above 0 for a
    cap of 20) and the top-1 of each recipe from results.json."""
    from tests.conftest import FAST_TRAIN

    common = ["-m", "d3hr", "compare", "--dataset", "digits", "--out", str(tmp_path / "grid"), "--methods", "d3hr",
              "--ipc", "2", "--seeds", "1", "--recipes", "dc", "--epochs", "1",
              *(a for s in [*FAST_TRAIN, "invert.check_every=10", "invert.tolerance=0.4"] for a in ("--set", s))]
    _run(*common)
    _run(*common, "--sweep", "invert.per_class=20,all")
    _run(*common, "--sweep", "invert.tolerance=0.8")
    # seed 2's per_class=all reads seed 0's statistics from the cache: timed by the run that inverted
    seeds = common.index("--seeds") + 1  # "1": one seed, seed 0
    _run(*common[:seeds], "2-2", *common[seeds + 1:], "--sweep", "invert.per_class=all")
    out = _run(str(BENCH / "invert_subsample.py"), "grid", "--out", str(tmp_path / "grid"), "--ipc", "2",
               "--results", str(tmp_path / "results"))
    records = json.loads((tmp_path / "results" / "grid-ipc2.json").read_text())["rows"]
    again = next(r for r in records if r["seed"] == 2)
    rows = {r["setting"]: r for r in records if r["seed"] == 0}
    assert set(rows) == {"rule", "rule0.8", "20", "all"}
    assert again["setting"] == "all" and not again["inverted_here"] and rows["all"]["inverted_here"]
    assert again["inversion_seconds"] == rows["all"]["inversion_seconds"] > 0
    assert rows["rule0.8"]["images"] < rows["rule"]["images"]  # a looser tolerance stops earlier
    assert rows["20"]["images"] == 200 and rows["all"]["images"] == 600  # data.limit=600: 60 a class
    assert rows["all"]["errors"] == {"mean_in_std": 0.0, "std_rel": 0.0, "skewness_abs": 0.0}
    assert rows["20"]["errors"]["mean_in_std"] > 0 and rows["rule"]["images"] < 600
    own = json.loads((tmp_path / "grid" / "runs" / "d3hr-ipc2-seed0-per_classall" / "stages.json").read_text())
    assert rows["all"]["selection_loss_vs_full"] == pytest.approx(own["select"]["mean_loss"], rel=1e-4)
    assert all(0 <= r["top1"]["dc"] <= 1 for r in rows.values())
    assert "| rule | 1 |" in out and "| all | 2 |" in out and (tmp_path / "results" / "grid-ipc2.md").is_file()
    table = [line.split(" | ")[0] for line in out.splitlines() if line.startswith("| ")][1:]  # after the header
    assert table == ["| rule", "| rule0.8", "| 20", "| all"]


@pytest.fixture(scope="module")
def tiny_d3hr_run(tmp_path_factory):
    """A D3HR run on digits with a tiny random generator given as a pretrained one (no training)."""
    import torch

    from d3hr.cli import main
    from d3hr.generator import build_small, save_generator
    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("bench-pack")
    torch.manual_seed(0)
    save_generator(build_small(num_classes=10, channels=1, image_size=8, **TINY).eval(), root / "gen")
    sets = ["select.candidates=256", "diffusion.num_steps=10", "diffusion.inversion_steps=6", "data.limit=600"]
    assert main(["distill", "--dataset", "digits", "--ipc", "3", "--generator", str(root / "gen"), "--guidance", "1",
                 "--out", str(root / "run"), *[a for s in sets for a in ("--set", s)]]) == 0
    return root / "run"


def test_storage_measures_a_run_and_computes_imagenet(tiny_d3hr_run):
    out = _run(str(BENCH / "storage.py"), str(tiny_d3hr_run))
    rows = {r[1].strip(): [c.strip() for c in r[2:]] for r in (ln.split("|") for ln in out.splitlines())
            if len(r) > 8 and r[1].strip() not in ("set", "---")}
    digits = rows["digits IPC 3 (d3hr)"]
    assert digits[0] == "30" and float(digits[3]) > 1  # 8x8 digits: the pack is larger than the PNGs it stands for
    assert digits[5] == "360.0 KB"  # 30 images x 300 epochs x 1 view x 10 classes x 4 bytes
    for ipc, soft in ((10, "12.0 GB"), (50, "60.0 GB")):
        row = rows[f"ImageNet-1K IPC {ipc} (d3hr, computed)"]
        assert row[0] == f"{1000 * ipc:,}" and row[5] == soft and float(row[3]) < 0.1


def test_unpack_costs_what_generate_costs(tiny_d3hr_run):
    out = _run(str(BENCH / "unpack.py"), str(tiny_d3hr_run), "--repeats", "1")
    lines = {ln.split("  ")[0]: ln for ln in out.splitlines()}
    g = float(lines["generate stage (d3hr generate)"].split("median")[1].split()[0])
    u = float(lines["unpack (d3hr unpack)"].split("median")[1].split()[0])
    ratio = float(lines["unpack / generate"].split()[-1].rstrip("x"))
    assert g > 0 and u > 0 and ratio == pytest.approx(u / g, rel=0.02)
    assert "10/10 classes choose the packed candidate with float16 skewness" in out


def test_campaign_runs_parts_once_records_them_and_resumes_from_the_committed_table(tmp_path, monkeypatch):
    """Two tiny parts on digits: tables and parts.json copied to --results; a rerun does nothing; a fresh OUT (another
    machine) gets the committed rows back and redoes nothing either."""
    monkeypatch.setenv("D3HR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("D3HR_QUIET", "1")
    script, results = str(BENCH / "campaign.py"), tmp_path / "results"
    run = [script, "run", "--plan", "smoke", "--results", str(results)]
    out = _run(*run, "--out", str(tmp_path / "grid"))
    assert out.count("[campaign] smoke-") == 3
    table = json.loads((results / "results.json").read_text())
    sweep = ["select.candidates", 32]
    assert {(r["method"], r["seed"], str(r["sweep"])) for r in table["cells"]} == {
        ("random-real", 0, "None"), ("base-rs", 0, "None"), ("random-real", 1, "None"), ("base-rs", 0, str(sweep))}
    assert [(q["method"], q["sweep"]) for q in table["set_metrics"]["cells"]] == [("base-rs", sweep)]
    assert {(p["a"], str(p["sweep"]), str(p["sweep_b"])) for p in table["paired"]} >= {
        ("base-rs", str(sweep), "None")}  # the swept cell against its method's default
    parts = json.loads((results / "parts.json").read_text())
    assert set(parts) == {"smoke-a", "smoke-b", "smoke-c"} and all(p["seconds"] > 0 for p in parts.values())
    assert all(p["kernels"].startswith("cpu ") for p in parts.values())  # which machine type ran it
    assert "--seeds 1-1" in parts["smoke-b"]["command"] and (results / "results.md").is_file()
    assert "--sweep select.candidates=32 --metrics" in parts["smoke-c"]["command"]
    assert parts["smoke-b"]["command"].endswith("--ars")  # and its cell without augmentation, for ARS
    assert {r["recipe"] for r in table["cells"] if r["seed"] == 1} == {"dc", "dc-noaug"}
    assert _run(*run, "--out", str(tmp_path / "grid")).count("[campaign]") == 0
    assert _run(*run, "--out", str(tmp_path / "elsewhere")).count("[campaign]") == 0
    listed = _run(script, "list", "--plan", "smoke", "--results", str(results))
    assert "done" in listed.split("\n")[0] and "~0.0 wall hours of this plan left" in listed


def _campaign_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("campaign", BENCH / "campaign.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["campaign"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_campaign_estimates_only_what_is_missing_and_deadlines_roll_past_midnight():
    """A part's estimate counts the cells results.json lacks (and the one-off cache only before its first cell); an
    --until earlier than now means tomorrow."""
    import datetime

    c = _campaign_module()
    part = c.Part("p", ("d3hr", "random-real"), 10, (0,), ("dc", "rded"), once_minutes=35.0, metrics=True)
    per_cell = c.MINUTES[("dc", 10)] + c.MINUTES[("rded", 10)]
    assert part.minutes({}) == pytest.approx(2 * per_cell + 2 * c.METRICS_MINUTES + 35.0)
    row = {"method": "d3hr", "ipc": 10, "seed": 0, "student": "convnet", "sweep": None}
    table = {"cells": [{**row, "recipe": "dc"}, {**row, "recipe": "rded"}]}
    assert part.minutes(table) == pytest.approx(per_cell + 2 * c.METRICS_MINUTES)  # no cache: it was built
    assert part.minutes({"cells": [{**row, "ipc": 50, "recipe": "dc"}]}) == pytest.approx(part.minutes({}))
    table["cells"] += [{**row, "method": "random-real", "recipe": r} for r in ("dc", "rded")]
    table["set_metrics"] = {"cells": [{"method": m, "ipc": 10, "seed": 0, "sweep": None} for m in part.methods]}
    assert part.minutes(table) == 0.0 and c._done(part, table)
    ars = c.Part("a", ("d3hr",), 10, (0,), ("dc",), ars=True)
    assert ars.minutes(table) == pytest.approx(c.MINUTES[("dc", 10)]) and not c._done(ars, table)
    deep = c.Part("r", ("d3hr",), 10, (0,), ("dc",), "resnet18")
    assert deep.minutes({}) == pytest.approx(c.MINUTES[("dc", 10)] * c.STUDENT_COST["resnet18"])
    assert {p.student for p in c.plan()} <= set(c.STUDENT_COST)  # every student of the plan has a measured cost
    soon = datetime.datetime.now() - datetime.timedelta(minutes=5)
    wait = c._deadline(f"{soon.hour:02d}:{soon.minute:02d}") - datetime.datetime.now().timestamp()
    assert 23 * 3600 < wait <= 24 * 3600


def test_campaign_can_run_a_parts_hard_label_cells_first():
    """--recipes dc: a part's dc cells alone, recorded as PART:dc; the part stays to do until its rded cells ran."""
    c = _campaign_module()
    part = c.Part("ipc50-d3hr-seed0", ("d3hr",), 50, (0,), ("dc", "rded"))
    hard, name = c.restricted(part, ["dc"])
    assert hard.recipes == ("dc",) and name == "ipc50-d3hr-seed0:dc" and "--recipes dc --student" in " ".join(
        hard.command(Path("OUT")))
    assert c.restricted(part, ["dc", "rded"]) == (part, "ipc50-d3hr-seed0") and c.restricted(part, None)[0] is part
    assert c.restricted(c.Part("s", ("random-real",), 50, (0,), ("rded",)), ["dc"])[0] is None
    assert c.restricted(c.Part("f", ("full",), 10, (0,), ("dc",)), ["dc"])[0] is None  # its own recipe, dc-full
    row = {"method": "d3hr", "ipc": 50, "seed": 0, "student": "convnet", "sweep": None, "recipe": "dc"}
    assert c._done(hard, {"cells": [row]}) and not c._done(part, {"cells": [row]})
    assert hard.command(Path("OUT"), "cuda")[-2:] == ["--device", "cuda"] and "--device" not in hard.command(Path("O"))


def test_campaign_skips_a_part_whose_recorded_cells_lost_their_run_folders(tmp_path, capsys, monkeypatch):
    """After a reset, a part with some cells done (e.g. ARS: the augmented cells) would distill them again with the
    rebuilt caches and replace their rows: it is skipped with one line, unless --redo."""
    import argparse

    c = _campaign_module()
    part = c.Part("ars-ipc10-seed0", ("d3hr",), 10, (0,), ("dc",), ars=True)
    monkeypatch.setattr(c, "plan", lambda name: [part])
    out = tmp_path / "grid"
    row = {"method": "d3hr", "ipc": 10, "seed": 0, "recipe": "dc", "student": "convnet", "sweep": None,
           "run": "/elsewhere/runs/d3hr-ipc10-seed0"}
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"cells": [row]}))
    assert c.lost_cells(part, {"cells": [row]}, out) == ["d3hr-ipc10-seed0"]
    ran = []
    monkeypatch.setattr(c.subprocess, "run", lambda cmd, env: ran.append(cmd) or argparse.Namespace(returncode=0))
    args = argparse.Namespace(out=str(out), results=str(tmp_path / "results"), until=None, only=None,
                              plan="fashion-mnist", recipes=None, redo=False, device="cpu")
    c.run_parts(args)
    assert not ran and "skipped: 1 of its cells are in the table but their run folders are gone" in (
        capsys.readouterr().out)
    c.list_parts(out, "fashion-mnist", out)
    assert "1 recorded cells lost their run folders (--redo or another --out)" in capsys.readouterr().out
    c.run_parts(argparse.Namespace(**{**vars(args), "redo": True}))  # asked for: it runs
    assert len(ran) == 1 and "--ars" in ran[0]
    (out / "runs" / "d3hr-ipc10-seed0").mkdir(parents=True)
    (out / "runs" / "d3hr-ipc10-seed0" / "config.yaml").write_text("seed: 0\n")
    assert c.lost_cells(part, {"cells": [row]}, out) == []  # the folder is there: nothing is made again


def test_student_cost_times_each_student_beside_the_first():
    out = _run(str(BENCH / "student_cost.py"), "--students", "convnet,vgg11", "--images", "4", "--size", "8",
               "--epochs", "1", "--threads", "1")
    rows = {r[0]: r for r in _rows(out, "convnet") + _rows(out, "vgg11")}
    assert set(rows) == {"convnet", "vgg11"} and rows["convnet"][2] == "1.0x" and float(rows["vgg11"][1]) > 0


def test_campaign_scales_its_estimates_by_this_machines_speed(tmp_path, capsys, monkeypatch):
    """--until is checked against the estimates times how much slower a dc step is here: a part that would not fit
    on a (pretend) very slow machine does not start."""
    import argparse

    c = _campaign_module()
    assert c.machine_factor(1) > 0  # a real dc step timed here
    monkeypatch.setattr(c, "machine_factor", lambda threads: 1e6)
    args = argparse.Namespace(out=str(tmp_path / "grid"), results=str(tmp_path / "results"), until="23:59",
                              only="smoke-a", plan="smoke", recipes=None, redo=False, device="cpu")
    c.run_parts(args)
    out = capsys.readouterr().out
    assert "smoke-a: ~" in out and "min here does not fit before --until; stopping" in out
    assert not (tmp_path / "results" / "parts.json").exists()  # nothing ran
    with pytest.raises(SystemExit, match="on another device bound the run with timeout"):  # estimates are CPU's
        c.run_parts(argparse.Namespace(**{**vars(args), "device": "cuda"}))



def test_gpu_campaign_script_runs_parts_and_carries_its_caches_to_the_next_call(tmp_path):
    """bench/gpu_campaign.sh, tried on the CPU (DEVICE=cpu; the lent GPU machine runs it with cuda): one call runs the
    parts into $OUT/results with parts.json and packs the caches; the next call, given them in .gpu/, reuses the
    generator instead of training it again."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("bench", "src"):  # the scripts work from the repository root they sit in
        (repo / name).symlink_to(BENCH.parent / name)
    env = {**os.environ, "DEVICE": "cpu", "PY": sys.executable, "OMP_NUM_THREADS": "1",
           "RESULTS": str(tmp_path / "committed")}  # none yet
    env.pop("PYTHONPATH", None)

    def call(n: int) -> Path:
        out = tmp_path / f"out{n}"
        proc = subprocess.run(["bash", str(repo / "bench" / "gpu_campaign.sh"), "5", "--plan", "smoke", "--only",
                               "smoke-a"], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                              env={**env, "OUT": str(out), "GRID": str(tmp_path / f"grid{n}"),
                                   "D3HR_CACHE": str(tmp_path / f"cache{n}")})
        assert proc.returncode == 0, proc.stderr[-2000:]
        return out

    first = call(1)
    rows = json.loads((first / "results" / "results.json").read_text())["cells"]
    assert {r["method"] for r in rows} == {"random-real", "base-rs"}
    parts = json.loads((first / "results" / "parts.json").read_text())
    assert parts["smoke-a"]["kernels"].startswith("cpu ")
    pieces = sorted(first.glob("cache.tgz.*"))
    assert pieces and all(p.stat().st_size <= 15 * 2**20 for p in pieces)
    (repo / ".gpu").mkdir()
    for p in pieces:
        shutil.copy2(p, repo / ".gpu" / p.name)
    call(2)
    stages = json.loads((tmp_path / "grid2" / "runs" / "base-rs-ipc1-seed0" / "stages.json").read_text())
    trained = json.loads((tmp_path / "grid1" / "runs" / "base-rs-ipc1-seed0" / "stages.json").read_text())
    assert trained["generator"]["seconds"] > 0 and stages["generator"]["seconds"] == 0.0  # unpacked, not retrained
    assert stages["generator"]["sha256"] == trained["generator"]["sha256"]


def test_set_diversity_on_known_sets(tmp_path):
    """Pairwise pixel distance and pixel std: 0 for a class of duplicates, the hand-computed values for two images;
    the script reads a real run folder and a training-set reference."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("set_diversity", BENCH / "set_diversity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    same = torch.full((3, 1, 2, 2), 200, dtype=torch.uint8)
    assert mod.class_diversity(same, torch.zeros(3, dtype=torch.long)) == (0.0, 0.0)
    two = torch.stack([torch.zeros(1, 2, 2), torch.full((1, 2, 2), 255.0)]).to(torch.uint8)  # 4 pixels 0 vs 1
    dist, std = mod.class_diversity(two, torch.tensor([0, 0]))
    assert dist == pytest.approx(2.0) and std == pytest.approx(2 ** -0.5)  # sqrt(4 x 1); std of (0, 1), ddof 1
    with pytest.raises(ValueError):
        mod.class_diversity(two, torch.tensor([0, 1]))  # no class with two images
    picks = mod.real_draw(torch.tensor([0, 0, 0, 1, 1]), 2, seed=0)
    assert sorted(int(i) < 3 for i in picks) == [False, False, True, True]
    _run("-m", "d3hr", "distill", "--dataset", "digits", "--method", "random-real", "--ipc", "3",
         "--out", str(tmp_path / "real"))
    out = _run(str(BENCH / "set_diversity.py"), str(tmp_path / "real"), "--real", "3")
    rows = [ln.split() for ln in out.splitlines()[1:]]
    assert rows[0][:2] == ["real", "30"] and rows[1][-3] == "30"  # 10 classes x 3 images, both
    assert all(float(r[-2]) > 0 and 0 < float(r[-1]) < 0.5 for r in rows)
    # a second run read at another resolution: the real reference would be read at one of them, so --real refuses
    shutil.copytree(tmp_path / "real", tmp_path / "real16")
    cfg = tmp_path / "real16" / "config.yaml"
    text = cfg.read_text()
    assert "resolution: 8\n" in text
    cfg.write_text(text.replace("resolution: 8\n", "resolution: 16\n"))
    bad = subprocess.run([sys.executable, str(BENCH / "set_diversity.py"), str(tmp_path / "real"),
                          str(tmp_path / "real16"), "--real", "3"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--real needs one dataset" in bad.stderr and "real16" in bad.stderr
