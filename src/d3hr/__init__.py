"""d3hr: dataset distillation with diffusion models (D3HR, Zhao et al., ICML 2025)."""

__version__ = "0.1.0"

from d3hr.api import distill, finetune, generate, invert, load_run, select, train_generator, verify  # noqa: E402
from d3hr.config import Config, load_config  # noqa: E402
from d3hr.errors import D3HRError  # noqa: E402
from d3hr.evaluate import evaluate  # noqa: E402

__all__ = ["Config", "D3HRError", "__version__", "distill", "evaluate", "finetune", "generate", "invert", "load_config",
           "load_run", "select", "train_generator", "verify"]
