#!/usr/bin/env bash
# On a GPU machine of the device tool (run from the repository root, with .whl carried):
#   1. installs the carried wheels (scripts/device/carry.txt, `make device-wheels`),
#   2. profiles SD-Turbo and SDXL-Lightning with random weights (the published architectures),
#      batch 1-16, with model switches through pinned host memory,
#   3. profiles SD-Turbo again with its UNet compiled (torch.compile, reduce-overhead: CUDA graphs),
#   4. leaves the profiles, their measurements and the log under $OUT.
# Each step is bounded (300 + 240 s by default, inside the tool's 600 s per call). Overrides, for a
# dry run on a CPU say: DEVICE, MODELS, BATCHES, RUNS, PLAIN_TIMEOUT_S, COMPILED_TIMEOUT_S, PYTHON.
# Dry run of the plain step on this 2-core CPU, in a Python 3.12 venv holding only what the GPU
# image holds (DEVICE=cpu MODELS=sd-turbo BATCHES=1 RUNS=1): the wheels installed, the profile was
# written (35 s per 512-pixel image); compiling the full UNet did not finish within 240 s here.
set -uo pipefail
OUT=${OUT:?set OUT to the folder that comes back}
DEVICE=${DEVICE:-cuda}
MODELS=${MODELS:-sd-turbo sdxl-lightning}
BATCHES=${BATCHES:-1 2 4 8 16}
RUNS=${RUNS:-5}
PLAIN_TIMEOUT_S=${PLAIN_TIMEOUT_S:-300}
COMPILED_TIMEOUT_S=${COMPILED_TIMEOUT_S:-240}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

$PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "installing the carried wheels failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
mkdir -p "$OUT/profiles"
log="$OUT/profile.log"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"; } 2>&1 | tee "$log"

# shellcheck disable=SC2086  # the lists are meant to split
timeout "$PLAIN_TIMEOUT_S" $PYTHON scripts/profile_gpu.py --random-weights --device "$DEVICE" --models $MODELS \
  --batches $BATCHES --runs "$RUNS" --swap-runs 3 --out "$OUT/profiles" 2>&1 | tee -a "$log"
plain=${PIPESTATUS[0]}
# shellcheck disable=SC2086
timeout "$COMPILED_TIMEOUT_S" $PYTHON scripts/profile_gpu.py --random-weights --device "$DEVICE" --models sd-turbo \
  --batches 1 2 4 --runs "$RUNS" --compile reduce-overhead --out "$OUT/profiles" 2>&1 | tee -a "$log"
compiled=${PIPESTATUS[0]}
echo "device_profile plain=$plain compiled=$compiled"
[ "$plain" -eq 0 ] && [ "$compiled" -eq 0 ]
