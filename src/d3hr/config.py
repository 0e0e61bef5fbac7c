"""Run configuration: dataclasses with the paper's defaults, YAML in, resolved YAML out, dotted overrides."""

from __future__ import annotations

import copy
import difflib
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from d3hr.errors import D3HRError

FINGERPRINTS = ("sample", "full", "trust")  # levels of a dataset's identity (d3hr.data.identity)


@dataclass
class DataConfig:
    """Which dataset, where it lives, and its shape. Shapes left as None / 'auto' are inferred from the images and the
    generator (d3hr.data.shape) and written out resolved in RUN/config.yaml."""

    name: str = "digits"
    root: str | None = None
    download: bool = False
    limit: int | None = None  # use only the first `limit` training images (in dataset order)
    resolution: int | None = None  # side images are read (shorter side, center crop), saved and evaluated at
    channels: int | None = None  # 1 or 3; None: 1 when every surveyed image is grayscale
    image_size: int | None = None  # generator input side; None: the pretrained generator's, or the data's rounded up
    fit: str = "auto"  # pad | resize (resolution -> image_size) | auto (pad square images slightly smaller)
    fingerprint: str = "sample"  # what caches key on: sample | full | trust (d3hr.data.identity)


# Training budgets of the generator trained here, in optimizer steps, the same for every dataset. On a 4,000-image
# 28x28 folder (bench/generator_budget.py, README "Your own images") the VAE's held-out PSNR is 21.4 dB after 240
# steps, 23.1 after 480 and 23.5 after 720: 500 steps is past the knee; the DiT gets what keeps the whole distill of
# that folder within 15 minutes on 2 CPU cores.
DEFAULT_VAE_STEPS = 500
DEFAULT_DIT_STEPS = 1200


@dataclass
class VAEConfig:
    """Small AutoencoderKL trained here (ignored for a pretrained generator)."""

    block_out_channels: list[int] | None = None  # None: sized from data.image_size; one downsample per extra block
    latent_channels: int = 4
    layers_per_block: int = 1
    steps: int | None = None  # optimizer steps; None: DEFAULT_VAE_STEPS unless epochs is given
    epochs: int | None = None  # alternative to steps: passes over the training images
    batch_size: int = 64
    lr: float = 1e-3
    kl_weight: float = 1e-4


@dataclass
class DiTConfig:
    """Small class-conditional DiTTransformer2DModel trained here (ignored for a pretrained generator)."""

    num_layers: int | None = None  # None: sized from data.image_size (so are the head dim and patch size)
    num_attention_heads: int = 4
    attention_head_dim: int | None = None
    patch_size: int | None = None
    steps: int | None = None  # optimizer steps; None: DEFAULT_DIT_STEPS unless epochs is given
    epochs: int | None = None  # alternative to steps: passes over the training latents
    batch_size: int = 128
    lr: float = 3e-4
    ema_decay: float = 0.999
    label_dropout: float = 0.1  # share of null labels in training, for classifier-free guidance


@dataclass
class GeneratorConfig:
    """A pretrained diffusers generator (`path`) or a small one trained on the dataset."""

    path: str | None = None  # diffusers directory or hub id with vae/ and transformer/
    class_map: str | None = None  # 'imagenet' or a JSON file: class name -> generator label index
    cache_dir: str | None = None  # where trained generators are cached; default $D3HR_CACHE or ~/.cache/d3hr
    precision: str = "fp32"  # training autocast: fp32 | bf16 (bf16 measured slower for these small models on CPU)
    seed: int = 0  # training seed: one generator serves every distillation seed
    vae: VAEConfig = field(default_factory=VAEConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)


@dataclass
class DiffusionConfig:
    """DDIM inversion and sampling (DESIGN.md section 2)."""

    num_steps: int = 50  # N: DDIM grid steps over the generator's training timesteps
    # K: grid steps walked up by inversion and back down by sampling; auto: chosen from the data among
    # auto_levels by the skewness rule of d3hr.distillation.depth (one inversion pass to the deepest level)
    inversion_steps: int | str = 31
    # candidates for K=auto; null: AUTO_FRACTIONS of num_steps (10, 15, 20, 25, 31, 40 of the default 50)
    auto_levels: list[int] | None = None
    auto_reach: float = 0.9  # K=auto: the first level with this share of the best reduction in mean |skewness|
    # Classifier-free guidance, same scale both ways. None: 4.0 (the authors' value for DiT-XL/2) with a pretrained
    # generator, 1.0 with a small one trained here (measured on digits: 4.0 made inverted latents less normal and
    # only 46% of distilled images recognisable by a real-data classifier, against 99% at 1.0).
    guidance_scale: float | None = None
    encode: str = "mean"  # mean (posterior mean, deterministic) | sample (seeded posterior sample)
    batch_size: int = 256  # images per inversion batch (fixed work unit for streaming moments)
    precision: str = "fp32"  # fp32 | bf16 (autocast) for the model calls in inversion and sampling


AUTO_FRACTIONS = (0.2, 0.3, 0.4, 0.5, 0.62, 0.8)  # of the DDIM grid: the K=auto candidates unless given


def auto_levels(d: DiffusionConfig) -> list[int]:
    """The candidate levels of K=auto: diffusion.auto_levels, else AUTO_FRACTIONS of the grid's num_steps (the
    paper's K = 31 of 50 is 0.62), rounded, distinct and inside (0, num_steps)."""
    if d.auto_levels is not None:
        return list(d.auto_levels)
    return sorted({k for k in (round(f * d.num_steps) for f in AUTO_FRACTIONS) if 0 < k < d.num_steps})


@dataclass
class InvertConfig:
    """Which training images the invert stage maps: each class in a seeded random order, until the standard errors
    of its moments are small against what group sampling resolves at the run's IPC (d3hr.distillation.subsample)."""

    # auto: the tolerance rule decides | N: at most N per class (and the rule) | all: every image in dataset order,
    # rule off (the behaviour before subsampling)
    per_class: int | str = "auto"
    tolerance: float | None = 0.2  # stop a class when its relative standard errors are <= this; null: no rule
    check_every: int = 50  # images per class between two checks of the rule (a round)
    # the visiting order's seed: fixed by default, like the dataset itself, so that runs at other seeds (a compare
    # grid) share one inversion; null: the run's seed (the subsample then varies with it)
    seed: int | None = 0


AUTO_COVARIANCE = "lowrank:16"  # what stats.covariance=auto draws from at IPC >= AUTO_COVARIANCE_MIN_IPC, else diag
AUTO_COVARIANCE_MIN_IPC = 50


def resolve_covariance(text: str, ipc: int) -> str:
    """stats.covariance with ``auto`` resolved by the run's IPC: AUTO_COVARIANCE (lowrank:16) from IPC 50 on, diag
    below; other values unchanged.

    The rule is what Fashion-MNIST measured (README, "Correlated class distributions"; 5 seeds paired with diag):
    at IPC 50 correlations gain +3.6 points [+3.0, +4.1] under hard labels, at IPC 1 and 10 no interval excludes 0,
    so below 50, where nothing was shown, the paper's diag stays. lowrank rather than full: full's D x D factors
    cannot be held at D = 4096 (ImageNet), and at IPC 50 the two were level (+0.4 [-1.6, +2.4])."""
    if text != "auto":
        return text
    return AUTO_COVARIANCE if ipc >= AUTO_COVARIANCE_MIN_IPC else "diag"


def covariance_form(text: str) -> tuple[str, int | None]:
    """stats.covariance parsed: 'diag' and 'full' -> (form, None), 'lowrank:R' -> ('lowrank', R) with R >= 1; a
    one-line error naming the value otherwise (R < D is checked once the latent's D is known)."""
    if text in ("diag", "full"):
        return text, None
    head, _, rank = text.partition(":")
    if head == "lowrank" and rank.isascii() and rank.isdigit() and int(rank) >= 1:
        return head, int(rank)
    raise D3HRError(f"stats.covariance must be diag, full, lowrank:R with an integer R >= 1 or auto, got {text!r}")


def shrinkage_value(text: str) -> float | None:
    """stats.shrinkage parsed: 'auto' -> None (the OAS rule), a number in [0, 1] -> that rho; a one-line error
    naming the value otherwise."""
    if text == "auto":
        return None
    try:
        rho = float(text)
    except ValueError:
        rho = math.nan
    if not 0.0 <= rho <= 1.0:
        raise D3HRError(f"stats.shrinkage must be auto or a number in [0, 1], got {text!r}")
    return rho


@dataclass
class StatsConfig:
    """The class distributions group sampling draws from (d3hr.distillation.covariance): independent dimensions
    (diag, the paper's) or with correlations between latent dimensions."""

    # diag | full | lowrank:R (R principal directions plus a diagonal; 1 <= R < D) | auto (resolve_covariance: by IPC)
    covariance: str = "diag"
    # toward the diagonal, correlations times (1 - rho): auto (Oracle Approximating Shrinkage on the correlation
    # matrix, Chen et al. 2010) | a fixed rho in [0, 1], e.g. 0.1; ignored by diag
    shrinkage: str = "auto"
    # full / lowrank:R: the inverted latents kept per class to fit the model (lowrank's directions, the whitened
    # skewness): auto (all of them while they fit d3hr.distillation.covariance.MEMORY_BUDGET, else the most per
    # class that does, in the seeded visiting order) | N >= 2 (at most N per class); ignored by diag
    kept_per_class: int | str = "auto"


@dataclass
class SelectConfig:
    """What is distilled: a method of the registry (d3hr.distillation.methods; `d3hr methods` lists them)."""

    method: str = "d3hr"  # d3hr | base-rs | random-real | herding | kmeans-latent | base-ddpm | d3hr-herd
    ipc: int = 10
    candidates: int = 10000  # m: candidate groups per class
    weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 0.5])  # lambda_mu, lambda_sigma, lambda_gamma
    pools: int | None = None  # independent candidate pools shared by classes; None: one per class
    chunk: int = 1024  # candidates scored at once (memory only; never changes the result)
    allow_short_classes: bool = False  # distill classes with fewer training images than ipc (recorded in manifest)
    herd_pool: int = 10  # d3hr-herd: generated candidates per class, as a multiple of ipc
    # herding, d3hr-herd: the epochs of the evaluation teacher they select with (its sha256 keys the selection);
    # None: the one `d3hr evaluate` takes by default (the most epochs cached, else the teacher recipe's)
    teacher_epochs: int | None = None


@dataclass
class GenerateConfig:
    """Sampling back to images and saving them."""

    batch_size: int = 100
    save_size: int | None = None  # saved image side; None: the dataset's native resolution


@dataclass
class Config:
    """The whole run: written resolved to RUN/config.yaml."""

    out: str = "runs/default"
    seed: int = 0
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    invert: InvertConfig = field(default_factory=InvertConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _unknown_key(key: str, valid: list[str], where: str) -> D3HRError:
    near = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean '{where}{near[0]}'?" if near else f"; valid keys: {', '.join(valid)}"
    return D3HRError(f"unknown config key {where + key!r}{hint}")


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check and convert a YAML/CLI value to the annotated type, or raise a one-line error."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for tp_ in inner[:-1]:  # int | str: a number if it reads as one, else the word (auto, all)
            try:
                return _coerce(value, tp_, name)
            except D3HRError:
                pass
        return _coerce(value, inner[-1], name)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise D3HRError(f"config '{name}' must be a list, got {value!r}")
        return [_coerce(v, args[0], name) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise D3HRError(f"config '{name}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise D3HRError(f"config '{name}' must be an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError, OverflowError):
            raise D3HRError(f"config '{name}' must be an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise D3HRError(f"config '{name}' must be an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise D3HRError(f"config '{name}' must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            raise D3HRError(f"config '{name}' must be a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, dict | list):
            raise D3HRError(f"config '{name}' must be a string, got {value!r}")
        return str(value)
    raise D3HRError(f"config '{name}' has an unsupported type")


# Budgets given either way: setting one (not None) clears the other, so a run's resolved steps do not clash with
# epochs given later; both in one mapping is an error.
EXCLUSIVE = {"steps": "epochs", "epochs": "steps"}


def _legacy(obj: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Keys of earlier versions, still read from old run folders: select.strategy (random: method base-rs)."""
    if isinstance(obj, SelectConfig) and "strategy" in data:
        data = dict(data)
        if data.pop("strategy") == "random" and data.get("method", obj.method) == "d3hr":
            data["method"] = "base-rs"
    return data


def _apply(obj: Any, data: dict[str, Any], where: str = "") -> None:
    if not isinstance(data, dict):
        raise D3HRError(f"config section '{where.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    data = _legacy(obj, data)
    types_ = _field_types(type(obj))
    for key, value in data.items():
        if not isinstance(key, str) or key not in types_:
            raise _unknown_key(str(key), list(types_), where)
        current = getattr(obj, key)
        if is_dataclass(current):
            _apply(current, value, f"{where}{key}.")
            continue
        setattr(obj, key, _coerce(value, types_[key], f"{where}{key}"))
        other = EXCLUSIVE.get(key) if isinstance(obj, VAEConfig | DiTConfig) else None
        if other is not None and getattr(obj, key) is not None:
            if data.get(other) is not None:
                raise D3HRError(f"set {where}{key} or {where}{other}, not both")
            setattr(obj, other, None)


def parse_override(text: str) -> tuple[str, Any]:
    """Split 'a.b=value' and parse the value as YAML (so 3, 0.5, true, null and [1,2] work)."""
    if "=" not in text:
        raise D3HRError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except Exception:  # YAMLError, and whatever PyYAML's constructors raise: 2001-13-01, !!bool x, [[[...
        value = raw
    return key.strip(), value


def nest(key: str, value: Any) -> dict[str, Any]:
    """'a.b.c', v -> {'a': {'b': {'c': v}}}."""
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _read_yaml(path: str | Path) -> Any:
    """A YAML file's content, or a one-line error naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise D3HRError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise D3HRError(f"cannot read config file {path}: {exc}".splitlines()[0]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "malformed YAML"
        raise D3HRError(f"config file {path} is not valid YAML: {first}") from None
    except Exception as exc:  # PyYAML's constructors raise ValueError, KeyError, ... (2001-13-01, !!bool x)
        msg = f"config file {path} is not valid YAML: {type(exc).__name__}: {exc}"
        raise D3HRError(msg.splitlines()[0]) from None


def _load(cfg: Any, path: str | Path | None, overrides: list[dict[str, Any]] | None) -> Any:
    """``cfg`` (a config dataclass), then a YAML file, then override mappings, applied in place with type checks."""
    if path is not None:
        data = _read_yaml(path)
        if data is not None:
            _apply(cfg, data)
    for item in overrides or []:
        _apply(cfg, item)
    return cfg


def load_config(
    path: str | Path | None = None,
    overrides: list[dict[str, Any]] | None = None,
    base: Config | None = None,
    check: bool = True,
) -> Config:
    """Defaults (or ``base``), then a YAML file, then override mappings, validated (``check=False``: keys and types
    only, for a base that every use completes and validates, such as compare's under a sweep)."""
    cfg = _load(copy.deepcopy(base) if base is not None else Config(), path, overrides)
    if check:
        validate(cfg)
    return cfg


@dataclass
class EvalConfig:
    """How ``d3hr evaluate`` scores a run: the student, the training recipe and its overrides, seeds and teacher.
    YAML in (``--config``), dotted overrides (``--set epochs=100``) and typo hints as for ``Config``."""

    student: str = "convnet"  # convnet | convnet_d4 | convnet_d5 | resnet18 | a torchvision model name
    labels: str | None = None  # soft | hard; None: the recipe's (soft without a recipe)
    recipe: str | None = None  # None: rded for soft labels, dc for hard, dc-full with full
    seeds: int = 3  # student seeds 0..seeds-1
    epochs: int | None = None  # None: the recipe's
    augment: bool = True  # False: no augmentation (DD-Ranking's ARS)
    full: bool = False  # train on the whole real training split (the upper bound)
    teacher: str | None = None  # soft-label teacher architecture; None: convnet
    teacher_epochs: int | None = None  # None: the teacher recipe's (or the most epochs of one cached)
    best_of_last: int = 0  # > 0: also record the best top-1 of the last that many epochs (labelled so)
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def load_eval_config(path: str | Path | None = None, overrides: list[dict[str, Any]] | None = None) -> EvalConfig:
    """Defaults, then a YAML file, then override mappings, validated."""
    cfg = _load(EvalConfig(), path, overrides)
    checks = [(cfg.labels in (None, "soft", "hard"), f"labels must be soft or hard, got {cfg.labels!r}"),
              (cfg.seeds >= 1, f"seeds must be >= 1, got {cfg.seeds}"),
              (cfg.epochs is None or cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}"),
              (cfg.teacher_epochs is None or cfg.teacher_epochs >= 1,
               f"teacher_epochs must be >= 1, got {cfg.teacher_epochs}"),
              (cfg.best_of_last >= 0, f"best_of_last must be >= 0, got {cfg.best_of_last}")]
    for ok, msg in checks:
        if not ok:
            raise D3HRError(msg)
    return cfg


def _generator_checks(g: GeneratorConfig) -> list[tuple[bool, str]]:
    """(ok, message) for the generator's training settings: counts >= 1 (epochs >= 0), rates in range."""
    v, t = g.vae, g.dit
    counts = {"vae.latent_channels": v.latent_channels, "vae.layers_per_block": v.layers_per_block,
              "vae.batch_size": v.batch_size, "dit.num_attention_heads": t.num_attention_heads,
              "dit.batch_size": t.batch_size, "dit.num_layers": t.num_layers,
              "dit.attention_head_dim": t.attention_head_dim, "dit.patch_size": t.patch_size}
    checks = [(n is None or n >= 1, f"generator.{k} must be >= 1, got {n}") for k, n in counts.items()]
    checks += [(n is None or n >= 0, f"generator.{k} must be >= 0, got {n}")
               for k, n in (("vae.epochs", v.epochs), ("dit.epochs", t.epochs))]
    checks += [(v.block_out_channels is None or (len(v.block_out_channels) >= 1 and min(v.block_out_channels) >= 1),
                f"generator.vae.block_out_channels must be channel counts >= 1, got {v.block_out_channels}"),
               (v.lr > 0, f"generator.vae.lr must be > 0, got {v.lr}"),
               (t.lr > 0, f"generator.dit.lr must be > 0, got {t.lr}"),
               (v.kl_weight >= 0, f"generator.vae.kl_weight must be >= 0, got {v.kl_weight}"),
               (0 <= t.ema_decay < 1, f"generator.dit.ema_decay must be in [0, 1), got {t.ema_decay}"),
               (0 <= t.label_dropout < 1, f"generator.dit.label_dropout must be in [0, 1), got {t.label_dropout}")]
    return checks


def _depth_checks(d: DiffusionConfig) -> list[tuple[bool, str]]:
    if d.inversion_steps == "auto":
        levels = auto_levels(d)
        return [(len(levels) >= 2 and all(0 < k < d.num_steps for k in levels) and levels == sorted(set(levels)),
                 f"diffusion.auto_levels must be 2 or more increasing levels in (0, num_steps={d.num_steps}), "
                 f"got {levels}"),
                (0 < d.auto_reach <= 1, f"diffusion.auto_reach must be in (0, 1], got {d.auto_reach}")]
    if isinstance(d.inversion_steps, str):
        return [(False, f"diffusion.inversion_steps must be an integer or auto, got {d.inversion_steps!r}")]
    return [(0 <= d.inversion_steps < d.num_steps,
             f"diffusion.inversion_steps (K={d.inversion_steps}) must be in [0, num_steps={d.num_steps})")]


def _invert_checks(v: InvertConfig, ipc: int) -> list[tuple[bool, str]]:
    word = isinstance(v.per_class, str)
    return [(not word or v.per_class in ("auto", "all"),
             f"invert.per_class must be auto, all or a number of images, got {v.per_class!r}"),
            (word or v.per_class >= ipc, f"invert.per_class ({v.per_class}) must be >= select.ipc ({ipc})"),
            (v.tolerance is None or v.tolerance > 0, f"invert.tolerance must be > 0 (or null: no rule), "
                                                     f"got {v.tolerance}"),
            (v.per_class != "auto" or v.tolerance is not None,
             "invert.per_class=auto needs invert.tolerance (null turns the rule off: set a cap or all)"),
            (v.check_every >= 1, f"invert.check_every must be >= 1, got {v.check_every}")]


def validate(cfg: Config) -> None:
    """Reject values that cannot run, with a one-line error naming the value."""
    d, s = cfg.diffusion, cfg.select
    if cfg.stats.covariance != "auto":
        covariance_form(cfg.stats.covariance)  # each raises its own one-line error
    shrinkage_value(cfg.stats.shrinkage)
    kept = cfg.stats.kept_per_class
    checks = [
        (kept == "auto" or (isinstance(kept, int) and not isinstance(kept, bool) and kept >= 2),
         f"stats.kept_per_class must be auto or an integer >= 2, got {kept!r}"),
        (s.method != "full", "select.method 'full' is the whole training set, not a distilled set: "
                             "d3hr distill does not make it"),
        (s.ipc >= 1, f"select.ipc must be >= 1, got {s.ipc}"),
        (s.candidates >= 1, f"select.candidates must be >= 1, got {s.candidates}"),
        (s.herd_pool >= 1, f"select.herd_pool must be >= 1, got {s.herd_pool}"),
        (s.teacher_epochs is None or s.teacher_epochs >= 1,
         f"select.teacher_epochs must be >= 1 or null, got {s.teacher_epochs}"),
        (s.chunk >= 1, f"select.chunk must be >= 1, got {s.chunk}"),
        (s.pools is None or s.pools >= 1, f"select.pools must be >= 1, got {s.pools}"),
        (len(s.weights) == 3, f"select.weights must have 3 values (mu, sigma, gamma), got {s.weights}"),
        (all(w >= 0 for w in s.weights), f"select.weights must be >= 0, got {s.weights}"),
        (d.num_steps >= 1, f"diffusion.num_steps must be >= 1, got {d.num_steps}"),
        *_depth_checks(d),
        *_invert_checks(cfg.invert, s.ipc),
        (d.guidance_scale is None or d.guidance_scale >= 0,
         f"diffusion.guidance_scale must be >= 0, got {d.guidance_scale}"),
        (d.encode in ("mean", "sample"), f"diffusion.encode must be mean or sample, got {d.encode!r}"),
        (d.batch_size >= 1, f"diffusion.batch_size must be >= 1, got {d.batch_size}"),
        (d.precision in ("fp32", "bf16"), f"diffusion.precision must be fp32 or bf16, got {d.precision!r}"),
        (cfg.generator.precision in ("fp32", "bf16"),
         f"generator.precision must be fp32 or bf16, got {cfg.generator.precision!r}"),
        (cfg.data.fit in ("auto", "pad", "resize"), f"data.fit must be auto, pad or resize, got {cfg.data.fit!r}"),
        (cfg.data.limit is None or cfg.data.limit >= 1, f"data.limit must be >= 1, got {cfg.data.limit}"),
        (cfg.data.image_size is None or cfg.data.image_size >= 1,
         f"data.image_size must be >= 1, got {cfg.data.image_size}"),
        (cfg.data.resolution is None or cfg.data.resolution >= 1,
         f"data.resolution must be >= 1, got {cfg.data.resolution}"),
        (cfg.data.channels in (None, 1, 3), f"data.channels must be 1 or 3, got {cfg.data.channels}"),
        (cfg.data.fingerprint in FINGERPRINTS,
         f"data.fingerprint must be one of {', '.join(FINGERPRINTS)}, got {cfg.data.fingerprint!r}"),
        (cfg.generate.save_size is None or cfg.generate.save_size >= 1,
         f"generate.save_size must be >= 1, got {cfg.generate.save_size}"),
        *[(getattr(part, b) is None or getattr(part, b) >= 1,
           f"generator.{name}.{b} must be >= 1, got {getattr(part, b)}")
          for name, part in (("vae", cfg.generator.vae), ("dit", cfg.generator.dit)) for b in ("steps", "epochs")],
        (cfg.generate.batch_size >= 1, f"generate.batch_size must be >= 1, got {cfg.generate.batch_size}"),
        (cfg.data.image_size is None or cfg.data.image_size >= 1,
         f"data.image_size must be >= 1 (or null: from the data), got {cfg.data.image_size}"),
        (cfg.generate.save_size is None or cfg.generate.save_size >= 1,
         f"generate.save_size must be >= 1 (or null: the dataset's resolution), got {cfg.generate.save_size}"),
        *_generator_checks(cfg.generator),
    ]
    for ok, msg in checks:
        if not ok:
            raise D3HRError(msg)
