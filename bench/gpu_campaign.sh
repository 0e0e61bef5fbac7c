#!/bin/bash
# The campaign's parts on a lent GPU, in one device call of at most MINUTES minutes:
#     bash bench/gpu_campaign.sh MINUTES [campaign.py run options, e.g. --plan smoke | --only ipc50]
# Here first: bash bench/gpu_wheels.sh; the call carries .whl, .data (and .gpu, the caches of an earlier call).
# A GPU computes with other kernels than the CPU, so its generator, teacher and cells are other models: the GPU grid
# is a table of its own, bench/results/fashion-mnist-grid-gpu/ (committed), read from the tree and written back to
# $OUT with parts.json. Run folders live in /tmp there and die with the machine; each part is one compare, so a part
# cut off by the time limit is lost and rerun next time. The caches (generator, statistics, teacher) come back as
# $OUT/cache.tgz (split into 15 MB pieces when larger); put them in .gpu/ for the next call.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:?usage: gpu_campaign.sh MINUTES [campaign run options]}
shift
source bench/gpu_env.sh
out=${OUT:-/tmp/gpu-out}
grid=${GRID:-/tmp/grid}
export D3HR_CACHE=${D3HR_CACHE:-/tmp/d3hr-cache} OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} D3HR_QUIET=1 PYTHONUNBUFFERED=1
mkdir -p "$D3HR_CACHE" "$out/results"
redo=()
if ls .gpu/cache.tgz* >/dev/null 2>&1; then  # the earlier call's generator and teacher: cells made again (their
    cat .gpu/cache.tgz* | tar -xzf - -C "$D3HR_CACHE"  # run folders died with its machine) rest on the same weights
    redo=(--redo)
fi
committed=${RESULTS:-bench/results/fashion-mnist-grid-gpu}  # the GPU grid's table so far
cp "$committed"/* "$out/results/" 2>/dev/null || true
status=0
timeout --signal=INT "$((minutes * 60))" $PY bench/campaign.py run --out "$grid" --results "$out/results" \
    --device "$DEVICE" "${redo[@]}" "$@" || status=$?
[ "$status" -eq 124 ] && echo "[gpu_campaign] stopped after $minutes min; the part under way is lost"
tar -czf - -C "$D3HR_CACHE" . | split -b 15M -d - "$out/cache.tgz."
ls -l "$out" "$out/results"
exit $(( status == 124 ? 0 : status ))
