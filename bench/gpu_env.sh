# Sourced on the lent GPU machine by gpu_check.sh and gpu_campaign.sh: PY, the image's python3 (which holds
# PyTorch), with the carried wheels of .whl/ installed into /tmp/site and d3hr's src/ on PYTHONPATH (no install, no
# network). Fashion-MNIST's carried IDX files go where the loader looks by default.
PY=${PY:-python3}
if ! $PY -c "import diffusers" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "no diffusers and no .whl/: run bench/gpu_wheels.sh here and name .whl in the call's carry" >&2
        exit 2
    fi
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if ls .data/fashion-mnist/*-ubyte.gz >/dev/null 2>&1 && [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
    mkdir -p /usr/share/datasets/fashion-mnist && cp .data/fashion-mnist/*-ubyte.gz /usr/share/datasets/fashion-mnist/
fi
DEVICE=${DEVICE:-cuda}  # cpu only to try the scripts without a GPU (the test does)
$PY -c "import torch, d3hr; from d3hr.utils.dist import kernels; assert '$DEVICE' == 'cpu' or \
torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, kernels('$DEVICE'), 'd3hr', d3hr.__version__)"
