#!/bin/bash
# Here, before a session's GPU call (the lent machine reaches no network): the Python packages d3hr needs that the
# machine's image lacks, as wheels in .whl/, and Fashion-MNIST's four IDX files in .data/fashion-mnist/ (both
# ignored by git; the device call names them in `carry`). The image's python3 already holds PyTorch, torchvision,
# numpy, scipy, scikit-learn, PyYAML, tqdm, Pillow, matplotlib, safetensors and huggingface-hub.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
version=$($PY -c "import diffusers; print(diffusers.__version__)")  # the version the tests ran here
mkdir -p .whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "diffusers==$version" importlib_metadata
mkdir -p .data/fashion-mnist
cp /usr/share/datasets/fashion-mnist/*-ubyte.gz .data/fashion-mnist/ 2>/dev/null \
    || echo "note: no Fashion-MNIST here (make fashion-mnist); gpu_campaign.sh will need it"
du -sh .whl .data
