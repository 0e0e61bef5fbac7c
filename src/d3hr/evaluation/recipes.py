"""Training recipes by name: every setting of how a student (or the teacher) is trained, fixed independently of IPC.

- ``rded``: the soft-label protocol of RDED / D3HR (DESIGN.md section 4): RandomResizedCrop (scale 0.08-1), flip
  where it makes sense, CutMix beta(1, 1), KL(student/T || teacher/T) at T = 20, AdamW lr 1e-3, weight decay 0.01
  (none on norms and biases), cosine per step, 300 epochs, batch 64.
- ``dc``: the hard-label evaluation of DC / DSA (Zhao, Mopuri & Bilen, ICLR 2021; Zhao & Bilen, ICML 2021), from
  ``evaluate_synset`` and ``main.py`` in VICO-UoE/DatasetCondensation: cross-entropy, SGD momentum 0.9, lr 0.01
  (``lr_net``), weight decay 5e-4 on every parameter, lr x 0.1 from half the epochs on, batch 256 (``batch_train``),
  DSA augmentation 'color_crop_cutout_flip_scale_rotate' (flip dropped for digit datasets, as their readme says),
  inputs normalised by the training split's mean and std. Epochs: 1000. DC's ``epoch_eval_train`` is 300, but their
  ``main.py`` raises it to 1000 whenever augmentation is on (DSA, or DC's own augmentation) because "training with
  data augmentation needs more epochs"; DSA's evaluation always augments, so 1000 is the value that goes with it.
- ``dc-plain``: DC's own evaluation where its code augments nothing, the protocol of the DC paper's Table 1 and of
  the random-real baselines it reports (which the DSA paper copies): ``dc`` without augmentation, 300 epochs.
  DC's ``get_daparam`` sets the augmentation strategy to 'none' for every dataset but MNIST (and for BatchNorm
  ConvNets), and ``main.py`` keeps ``epoch_eval_train`` at 300 without augmentation. On Fashion-MNIST IPC 50,
  random real scores 84.6 under ``dc`` (4 seeds) against DC's 82.5: the DSA augmentation and 1000 epochs are a
  stronger protocol.
- ``dc-full``: ``dc`` for the full-data upper bound (the student on the whole training set), 30 epochs: DC's code
  gives no full-data schedule and 1000 epochs of 60,000 images would be 235k steps.
- ``teacher``: the soft-label teacher on the full training set, as earlier versions trained it: AdamW lr 1e-3,
  weight decay 0.01 (none on norms and biases), cosine per step, 60 epochs, batch 128, RandomResizedCrop (scale
  0.5-1) and flip where it makes sense, cross-entropy; [-1, 1] inputs like the ``rded`` students it labels. On
  Fashion-MNIST, ConvNet-3: 92.69% test top-1 after 30 epochs (the earlier default, loss still falling), 93.31% after
  60 (the DC paper's ConvNet on the whole set: 93.5 +- 0.1). An SGD
  teacher (lr 0.05, weight decay 5e-4) trained on translations only reached 98% on digits but its soft labels at
  T = 20 dropped the students from 97% to 78% (IPC 10, random real and D3HR alike); with resized crops, 87%. The
  temperature assumes the logit scale of this recipe.

A recipe with ``augment='none'`` (``without_augmentation``) is the other half of DD-Ranking's ARS.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, replace
from typing import Any

from d3hr.errors import D3HRError
from d3hr.evaluation.dsa import strategy_for

AUGMENTS = ("rrc-cutmix", "rrc", "dsa", "crop-flip", "none")
SCHEDULES = ("cosine", "step-half")


@dataclass(frozen=True)
class Recipe:
    """Every setting of one way to train a network; ``epochs`` is the same at every IPC."""

    name: str
    labels: str  # soft (KL to a teacher) | hard (cross-entropy)
    epochs: int
    batch_size: int
    optimizer: str  # adamw | sgd
    lr: float
    weight_decay: float
    momentum: float = 0.0  # sgd only
    decay_norms_biases: bool = True  # False: no weight decay on 1-d parameters (norms, biases)
    schedule: str = "cosine"  # cosine: per step to 0 | step-half: x 0.1 from epoch epochs // 2 on
    augment: str = "none"  # rrc-cutmix | rrc (no CutMix) | dsa | crop-flip | none
    crop_scale: tuple[float, float] | None = None  # rrc-cutmix, rrc: RandomResizedCrop area share
    dsa_strategy: str | None = None  # dsa: None -> DSA's evaluation strategy (without flip where flip is off)
    flip: bool | None = None  # None: the dataset's default (off for handwritten digits)
    temperature: float | None = None  # soft labels only
    normalize: str = "pm1"  # pm1: x / 127.5 - 1 | standardize: per-channel mean and std of the real training split
    precision: str = "fp32"  # fp32 | bf16 autocast

    def resolve(self, flip: bool) -> Recipe:
        """This recipe for a dataset whose flip default is ``flip``: fills ``flip`` and the DSA strategy."""
        flip = flip if self.flip is None else self.flip
        strategy = self.dsa_strategy if self.augment != "dsa" or self.dsa_strategy else strategy_for(flip)
        return replace(self, flip=flip, dsa_strategy=strategy)

    def settings(self) -> dict[str, Any]:
        """Every field, JSON-ready: what an evaluation record stores to name how it was trained."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    """Add ``recipe`` to the registry under its name (checked)."""
    check_recipe(recipe)
    RECIPES[recipe.name] = recipe
    return recipe


def list_recipes() -> list[str]:
    """Names of the registered recipes."""
    return sorted(RECIPES)


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """The registered recipe ``name``, with ``overrides`` (e.g. epochs=10) replaced and checked."""
    if name not in RECIPES:
        near = difflib.get_close_matches(name, list(RECIPES), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else f"; registered: {', '.join(list_recipes())}"
        raise D3HRError(f"unknown training recipe '{name}'{hint}")
    recipe = replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})
    check_recipe(recipe)
    return recipe


def without_augmentation(recipe: Recipe) -> Recipe:
    """``recipe`` with no augmentation at all (named '<name>-noaug'): the ARS counterpart."""
    return replace(recipe, name=f"{recipe.name}-noaug", augment="none", crop_scale=None, dsa_strategy=None)


def check_recipe(r: Recipe) -> None:
    """Raise a one-line error for a setting that cannot run."""
    checks = [
        (r.labels in ("soft", "hard"), f"labels must be soft or hard, got {r.labels!r}"),
        (r.epochs >= 1, f"epochs must be >= 1, got {r.epochs}"),
        (r.batch_size >= 1, f"batch_size must be >= 1, got {r.batch_size}"),
        (r.optimizer in ("adamw", "sgd"), f"optimizer must be adamw or sgd, got {r.optimizer!r}"),
        (r.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {r.schedule!r}"),
        (r.augment in AUGMENTS, f"augment must be one of {AUGMENTS}, got {r.augment!r}"),
        (r.augment not in ("rrc-cutmix", "rrc") or r.crop_scale is not None, f"augment {r.augment} needs crop_scale"),
        (r.labels == "hard" or (r.temperature or 0) > 0, "soft labels need a temperature > 0"),
        (r.normalize in ("pm1", "standardize"), f"normalize must be pm1 or standardize, got {r.normalize!r}"),
        (r.precision in ("fp32", "bf16"), f"precision must be fp32 or bf16, got {r.precision!r}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise D3HRError(f"recipe '{r.name}': {msg}")


register_recipe(Recipe(name="rded", labels="soft", epochs=300, batch_size=64, optimizer="adamw", lr=1e-3,
                       weight_decay=0.01, decay_norms_biases=False, schedule="cosine", augment="rrc-cutmix",
                       crop_scale=(0.08, 1.0), temperature=20.0))
DC = register_recipe(Recipe(name="dc", labels="hard", epochs=1000, batch_size=256, optimizer="sgd", lr=0.01,
                            weight_decay=5e-4, momentum=0.9, schedule="step-half", augment="dsa",
                            normalize="standardize"))
register_recipe(replace(DC, name="dc-plain", epochs=300, augment="none"))
register_recipe(replace(DC, name="dc-full", epochs=30))
register_recipe(Recipe(name="teacher", labels="hard", epochs=60, batch_size=128, optimizer="adamw", lr=1e-3,
                       weight_decay=0.01, decay_norms_biases=False, schedule="cosine", augment="rrc",
                       crop_scale=(0.5, 1.0)))

DEFAULT_RECIPE = {"soft": "rded", "hard": "dc"}  # what --labels picks
FULL_RECIPE = "dc-full"  # the full-data upper bound
TEACHER_RECIPE = "teacher"
