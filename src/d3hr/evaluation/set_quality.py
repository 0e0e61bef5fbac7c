"""``metrics``: set-quality metrics of a run's images against the real training images of its dataset, written to
RUN/eval/metrics.json (d3hr.evaluation.set_metrics defines each number).

Two sets a teacher recognises equally often can still differ in how much of each class they cover: FID, precision /
recall / density / coverage (k-NN radii, ``k``) and the mean pairwise feature distance (diversity) tell a set that
lacks diversity or coverage from one that lacks fidelity.

Features: the inputs of the last linear layer of the cached evaluation teacher (d3hr.evaluation.teacher: the teacher
soft labels use, trained first if there is none; the sha256 of its weights is recorded), or with ``inception=PATH``
the 2048 pool features of Inception-v3 loaded from a local torch-fidelity weights file through torchmetrics
(grayscale repeated to RGB; the network resizes to 299).

Real images: the dataset's whole training split, at the resolution the run's images were saved at. Per class, at most
``real_per_class`` of its images drawn without replacement (seeded by (seed, class)) are that class's reference; at
most ``real_max`` of their union (seeded) the overall reference. Every value is stored beside its counts.

Per class, with IPC images: coverage, density and diversity are the readouts to read. FID of IPC samples is computed
exactly (covariances of rank < IPC, no regularisation) but is biased upwards by the small count: compare it only
between sets of the same IPC (a random-real run of that IPC is the reference). Recall is None when IPC <= k (the
synthetic points have no k-th neighbour); any value whose counts are too small (fewer than 2 images, no more real
images than k) is None. Overall: FID and prdc of the whole set against the overall reference; ``diversity`` and
``real_diversity`` are the means over classes of the within-class values (pairs across classes would measure how far
apart the classes are, not diversity).

metrics.json is recomputed only when its key changes: the listed images, the real training split, the features'
identity (teacher or Inception weights sha256), k and the sampling settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from d3hr.config import Config
from d3hr.data.images import ImageSet
from d3hr.errors import D3HRError
from d3hr.evaluation.set_metrics import K_DEFAULT, diversity, fid, prdc
from d3hr.utils.io import read_json, sha256_file, sha256_json, write_json
from d3hr.utils.progress import say
from d3hr.utils.schema import METRICS, check
from d3hr.utils.seeding import generator_for

FORMAT_VERSION = 1
REAL_PER_CLASS = 1000  # real images per class, at most
REAL_MAX = 10_000  # real images of the overall reference, at most
INCEPTION_BATCH = 64

Extractor = Callable[[torch.Tensor], torch.Tensor]  # uint8 images (N, C, H, W) -> features (N, D)


def real_sample(targets: torch.Tensor, num_classes: int, per_class: int, max_total: int,
                seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per class c, at most ``per_class`` positions of ``targets`` (N,) equal to c, drawn without replacement (seeded
    by (seed, c)) and sorted; and the overall reference: at most ``max_total`` rows of their concatenation (seeded),
    sorted."""
    picks = []
    for c in range(num_classes):
        idx = torch.nonzero(targets == c).flatten()
        order = torch.randperm(len(idx), generator=generator_for(seed, "set-metrics-real", c))
        picks.append(idx[order[:per_class]].sort().values)
    total = sum(len(p) for p in picks)
    rows = torch.randperm(total, generator=generator_for(seed, "set-metrics-overall"))[:max_total]
    return picks, rows.sort().values


def fid_prdc(real: torch.Tensor, fake: torch.Tensor, k: int) -> dict[str, Any]:
    """Counts, FID and precision / recall / density / coverage of ``fake`` (M, D) against ``real`` (N, D); None
    where the counts are too small (FID: fewer than 2 on a side; prdc: N <= k; recall: M <= k)."""
    out: dict[str, Any] = {"n_real": len(real), "n_fake": len(fake), "fid": None, "precision": None, "recall": None,
                           "density": None, "coverage": None}
    if len(real) >= 2 and len(fake) >= 2:
        out["fid"] = fid(real, fake)
    if len(real) > k:
        out.update(prdc(real, fake, k))
    return out


def teacher_extractor(cfg: Config, test: ImageSet, arch: str, epochs: int | None,
                      device: str) -> tuple[Extractor, dict[str, Any]]:
    """The penultimate features of the cached evaluation teacher, and its identity (arch, epochs, sha256, path)."""
    from d3hr.distillation.baselines import penultimate_features
    from d3hr.evaluation.students import check_student
    from d3hr.evaluation.teacher import get_teacher
    from d3hr.utils.folders import cache_dir, writable_cache

    check_student(arch)
    cache = writable_cache(cache_dir(cfg.generator.cache_dir))
    model, meta = get_teacher(cfg.data, test, arch, epochs, device, cache)
    ident = {"extractor": "teacher", "arch": arch, "epochs": meta["epochs"], "sha256": meta["sha256"],
             "test_top1": meta.get("test_top1"), "path": meta["path"]}
    return (lambda images: penultimate_features(model, images)), ident


def inception_extractor(path: str | Path, device: str) -> tuple[Extractor, dict[str, Any]]:
    """Inception-v3 pool features (2048) from a local torch-fidelity weights file through torchmetrics, and its
    identity (the file's sha256); a one-line error when the file or the packages are missing."""
    path = Path(path)
    if not path.is_file():
        raise D3HRError(f"Inception weights file {path} does not exist")
    try:
        import torch_fidelity  # noqa: F401  (torchmetrics' Inception is torch-fidelity's)
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError:
        raise D3HRError("Inception features need torchmetrics and torch-fidelity: pip install "
                        "'torchmetrics[image]>=1.7' (or 'd3hr[inception]')") from None
    try:
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                 feature_extractor_weights_path=str(path)).to(device)
    except TypeError:
        raise D3HRError("this torchmetrics cannot load local Inception weights: pip install "
                        "'torchmetrics[image]>=1.7'") from None

    @torch.no_grad()
    def extract(images: torch.Tensor) -> torch.Tensor:
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images  # (N, 3, H, W) uint8
        return torch.cat([net(x[i : i + INCEPTION_BATCH].to(device)).float().cpu()
                          for i in range(0, len(x), INCEPTION_BATCH)])

    return extract, {"extractor": "inception-v3", "sha256": sha256_file(path), "path": str(path)}


def _check_args(k: int, real_per_class: int, real_max: int) -> None:
    for name, value in (("k", k), ("real_per_class", real_per_class), ("real_max", real_max)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise D3HRError(f"{name} must be an integer >= 1, got {value!r}")


def metrics(run_dir: str | Path, k: int = K_DEFAULT, real_per_class: int = REAL_PER_CLASS, real_max: int = REAL_MAX,
            teacher: str = "convnet", teacher_epochs: int | None = None, inception: str | Path | None = None,
            device: str = "cpu", seed: int = 0) -> dict[str, Any]:
    """Set-quality metrics of RUN/images (the images its manifest lists) against the real training images, overall
    and per class, in the evaluation teacher's features (``teacher``, ``teacher_epochs`` as in ``evaluate``) or in
    Inception-v3's (``inception``: a local weights file); written to RUN/eval/metrics.json and returned. See the
    module docstring for the real samples, the counts and what None means."""
    from d3hr.evaluation.runner import open_run, read_full_train, read_run_images
    from d3hr.utils.dist import check_device

    _check_args(k, real_per_class, real_max)
    check_device(str(device))
    root = Path(run_dir)
    cfg, test, manifest = open_run(root)
    images, targets, digest = read_run_images(root, test, manifest)  # (M, C, H, W) uint8, (M,)
    train, train_targets, real_digest = read_full_train(cfg)  # (N, C, H, W) uint8, (N,)
    extract, features = (inception_extractor(inception, str(device)) if inception is not None
                         else teacher_extractor(cfg, test, teacher, teacher_epochs, str(device)))
    settings = {"k": k, "real_per_class": real_per_class, "real_max": real_max, "seed": seed}
    key = sha256_json({"format_version": FORMAT_VERSION, **settings, "images_sha256": digest,
                       "real_sha256": real_digest, "features": [features["extractor"], features["sha256"]]})
    path = root / "eval" / "metrics.json"
    if path.is_file():
        old = check(read_json(path), METRICS, path)
        if old.get("key") == key:
            say(f"[metrics] {path} is up to date, not recomputed")
            return old
    t0 = time.time()
    picks, overall_rows = real_sample(train_targets, len(test.classes), real_per_class, real_max, seed)
    say(f"[metrics] features of {len(images)} run images and {sum(len(p) for p in picks)} real training images")
    real = extract(train[torch.cat(picks)])  # (R, D): the classes' picks, one after another
    fake = extract(images)  # (M, D)
    classes: dict[str, Any] = {}
    start = 0
    for c, name in enumerate(test.classes):
        real_c, fake_c = real[start : start + len(picks[c])], fake[targets == c]
        start += len(picks[c])
        classes[str(c)] = {"name": name, **fid_prdc(real_c, fake_c, k),
                           "diversity": diversity(fake_c) if len(fake_c) >= 2 else None,
                           "real_diversity": diversity(real_c) if len(real_c) >= 2 else None}
    overall = fid_prdc(real[overall_rows], fake, k)
    for name in ("diversity", "real_diversity"):
        values = [v[name] for v in classes.values() if v[name] is not None]
        overall[name] = sum(values) / len(values) if values else None
    result = {"format_version": FORMAT_VERSION, "key": key,
              "run": {"dataset": cfg.data.name, "method": manifest.get("method"), "ipc": manifest.get("ipc")},
              "features": {**features, "dim": real.shape[1]}, **settings,
              "real": {"train_images": len(train), "sha256": real_digest, "per_class": [len(p) for p in picks],
                       "overall": len(overall_rows)},
              "images_sha256": digest, "overall": overall, "classes": classes,
              "seconds": round(time.time() - t0, 1)}
    write_json(path, result)
    return result


def _cell(v: float | None, width: int, fmt: str) -> str:
    return f"{v:>{width}{fmt}}" if v is not None else f"{'-':>{width}}"


def format_table(result: dict[str, Any]) -> str:
    """A short text table of metrics.json: one row per class, then the overall row ('-': not computable). FID and
    distances are in the features' own scale (4 significant digits)."""
    feats = result["features"]
    what = (f"teacher {feats['arch']} (sha256 {feats['sha256'][:12]})" if feats["extractor"] == "teacher"
            else f"Inception-v3 (weights sha256 {feats['sha256'][:12]})")
    lines = [f"Set quality in the {feats['dim']}-d features of the {what}, k = {result['k']}; per class FID is biased "
             "by the small count: compare it only at equal IPC.",
             f"{'class':<14} {'n':>5} {'real':>6} {'FID':>9} {'prec':>6} {'recall':>6} {'density':>7} {'cover':>6} "
             f"{'divers':>8} {'real div':>8}"]
    rows = [(v["name"], v) for v in result["classes"].values()] + [("overall", result["overall"])]
    for name, v in rows:
        lines.append(f"{name[:14]:<14} {v['n_fake']:>5} {v['n_real']:>6} {_cell(v['fid'], 9, '.4g')} "
                     f"{_cell(v['precision'], 6, '.3f')} {_cell(v['recall'], 6, '.3f')} "
                     f"{_cell(v['density'], 7, '.3f')} {_cell(v['coverage'], 6, '.3f')} "
                     f"{_cell(v['diversity'], 8, '.4g')} {_cell(v['real_diversity'], 8, '.4g')}")
    return "\n".join(lines)
