"""Datasets by name, image fitting between dataset and generator resolution."""

from d3hr.data.images import ImageSet, fit_to_model, fit_to_saved, safe_class_dir
from d3hr.data.registry import DATASETS, dataset_preset, load_dataset, resolve_presets

__all__ = ["DATASETS", "ImageSet", "dataset_preset", "fit_to_model", "fit_to_saved", "load_dataset", "resolve_presets",
           "safe_class_dir"]
