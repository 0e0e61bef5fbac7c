#!/bin/bash
# One prepared run of the GPU checks (issue on scale): installs d3hr into a venv if needed, then prints one table.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q -e .
fi
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
.venv/bin/python bench/gpu_check.py --device cuda "$@"
