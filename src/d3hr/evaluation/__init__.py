"""Evaluation (DESIGN.md section 4): a cached teacher, students by name, soft- or hard-label training, test top-1.

The names below are imported on first use (PEP 562): ``d3hr.evaluation.results`` (read by reports) needs no torch.
"""

import importlib
from typing import Any

_NAMES = {"create_student": "students", "evaluate": "runner", "list_students": "students",
          "register_student": "students", "soft_label_loss": "train"}
__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'd3hr.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"d3hr.evaluation.{_NAMES[name]}"), name)
