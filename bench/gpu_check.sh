#!/bin/bash
# One prepared run of the GPU checks (issue on scale) on the lent machine: the image's python3 with the carried
# wheels (bench/gpu_wheels.sh here first; the call carries .whl), then one table.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
$PY bench/gpu_check.py --device cuda "$@"
