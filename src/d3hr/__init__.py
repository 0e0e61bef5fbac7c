"""d3hr: dataset distillation with diffusion models (D3HR, Zhao et al., ICML 2025).

``import d3hr`` is cheap: the public API below is imported on first use (PEP 562), so that commands which need
neither torch nor diffusers (``d3hr --help``, ``d3hr verify``) start at once.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("d3hr")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

# public name -> the module that defines it
_API = {**dict.fromkeys(("distill", "finetune", "generate", "invert", "load_run", "pack", "select", "train_generator",
                         "unpack"),
                        "d3hr.api"),
        "verify": "d3hr.utils.manifest", "evaluate": "d3hr.evaluation", "metrics": "d3hr.evaluation.set_quality",
        "Config": "d3hr.config", "load_config": "d3hr.config", "D3HRError": "d3hr.errors"}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access and cache the name here."""
    if name not in _API:
        raise AttributeError(f"module 'd3hr' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
