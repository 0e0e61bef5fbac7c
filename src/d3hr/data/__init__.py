"""Datasets by name, their shapes inferred from the images, and image fitting between dataset and generator."""

from d3hr.data.images import ImageSet, fit_to_model, fit_to_saved
from d3hr.data.registry import DATASETS, load_dataset, load_raw
from d3hr.data.shape import resolve_config
from d3hr.runfolder import safe_class_dir

__all__ = ["DATASETS", "ImageSet", "fit_to_model", "fit_to_saved", "load_dataset", "load_raw", "resolve_config",
           "safe_class_dir"]
