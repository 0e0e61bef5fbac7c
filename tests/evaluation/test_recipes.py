"""Every registered recipe's settings, pinned; overrides, resolution per dataset, and the no-augmentation twin."""

from __future__ import annotations

import pytest

from d3hr.errors import D3HRError
from d3hr.evaluation.recipes import DEFAULT_RECIPE, FULL_RECIPE, get_recipe, list_recipes, without_augmentation

COMMON = {"precision": "fp32", "flip": None}
PINNED = {
    "rded": {"labels": "soft", "epochs": 300, "batch_size": 64, "optimizer": "adamw", "lr": 1e-3,
             "weight_decay": 0.01, "momentum": 0.0, "decay_norms_biases": False, "schedule": "cosine",
             "augment": "rrc-cutmix", "crop_scale": [0.08, 1.0], "dsa_strategy": None, "temperature": 20.0,
             "normalize": "pm1"},
    "dc": {"labels": "hard", "epochs": 1000, "batch_size": 256, "optimizer": "sgd", "lr": 0.01,
           "weight_decay": 5e-4, "momentum": 0.9, "decay_norms_biases": True, "schedule": "step-half",
           "augment": "dsa", "crop_scale": None, "dsa_strategy": None, "temperature": None,
           "normalize": "standardize"},
    "teacher": {"labels": "hard", "epochs": 60, "batch_size": 128, "optimizer": "adamw", "lr": 1e-3,
                "weight_decay": 0.01, "momentum": 0.0, "decay_norms_biases": False, "schedule": "cosine",
                "augment": "rrc", "crop_scale": [0.5, 1.0], "dsa_strategy": None, "temperature": None,
                "normalize": "pm1"},
}
PINNED["dc-full"] = {**PINNED["dc"], "epochs": 30}
PINNED["dc-plain"] = {**PINNED["dc"], "epochs": 300, "augment": "none"}  # DC's Table 1: no augmentation, 300 epochs


@pytest.mark.parametrize("name", sorted(PINNED))
def test_recipe_settings_are_pinned(name: str) -> None:
    assert get_recipe(name).settings() == {"name": name, **PINNED[name], **COMMON}


def test_every_registered_recipe_is_pinned_and_defaults_point_at_them() -> None:
    assert list_recipes() == sorted(PINNED)
    assert DEFAULT_RECIPE == {"soft": "rded", "hard": "dc"} and FULL_RECIPE == "dc-full"


def test_resolve_fills_flip_and_the_dsa_strategy() -> None:
    dc = get_recipe("dc")
    assert dc.resolve(True).dsa_strategy == "color_crop_cutout_flip_scale_rotate" and dc.resolve(True).flip
    assert dc.resolve(False).dsa_strategy == "color_crop_cutout_scale_rotate" and dc.resolve(False).flip is False
    assert get_recipe("rded").resolve(False).dsa_strategy is None
    assert get_recipe("dc", flip=False).resolve(True).flip is False  # an explicit flip wins over the dataset's


def test_overrides_and_errors() -> None:
    assert get_recipe("dc", epochs=7, lr=None).epochs == 7 and get_recipe("dc", lr=None).lr == 0.01
    with pytest.raises(D3HRError, match="did you mean 'dc'"):
        get_recipe("dcc")
    with pytest.raises(D3HRError, match="epochs must be >= 1"):
        get_recipe("dc", epochs=0)
    noaug = without_augmentation(get_recipe("dc"))
    assert noaug.name == "dc-noaug" and noaug.augment == "none" and noaug.resolve(True).dsa_strategy is None
