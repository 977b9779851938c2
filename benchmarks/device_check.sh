#!/usr/bin/env bash
# The GPU checks, as one short run on a machine with a CUDA GPU, from the repository root:
#   bash benchmarks/device_check.sh
# It needs python3 with torch (CUDA), pytest, pyyaml and pillow, and installs nothing: the
# repository goes on PYTHONPATH, and pytest runs without the project's addopts (no pytest-xdist
# needed there). In order, each phase with its own time limit, so that a
# run cut short still leaves what it finished:
#   1. the CUDA-only tests (no host sync in the α step, GPU batches, GPU benchmarks);
#   2. the suite on the GPU in float32, ours and the reference back to back
#      (paper, eval, small, tiny configs);
#   3. ours with bfloat16 autocast (--amp) at the paper and eval configs;
#   4. the data pipeline into GPU memory.
# Everything lands in $OUT (or ./device-results): env.txt, cuda-tests.log, *.jsonl.
# DEVICE=cpu runs the same phases on the CPU (a dry run of the script itself; slow at
# paper size: set CONFIGS, e.g. CONFIGS="tiny eval", and EXTRA="--steps 1").
set -u -o pipefail
out=${OUT:-device-results}
device=${DEVICE:-cuda}
configs=${CONFIGS:-"paper paper-crb paper-crb-half eval small small-crb small-crb-half tiny tiny-crb tiny-crb-half"}
amp_configs=${AMP_CONFIGS:-"paper paper-crb-half eval"}
extra=${EXTRA:-"--steps 10"}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

python3 - <<'PY' 2>&1 | tee "$out/env.txt"
import os, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cpus", os.cpu_count())
print("gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
PY

args() { for c in $1; do printf -- '--config %s ' "$c"; done; }

timeout 240 python3 -m pytest -o addopts="" -q -rs -p no:cacheprovider -k gpu tests/test_sync_free.py tests/test_data.py \
    tests/test_history.py tests/test_bench_options.py 2>&1 | tee "$out/cuda-tests.log"
# shellcheck disable=SC2046,SC2086
timeout 360 python3 -m benchmarks --device "$device" --impl both $(args "$configs") $extra \
    | tee "$out/bench-$device-fp32.jsonl"
# shellcheck disable=SC2046,SC2086
timeout 120 python3 -m benchmarks --device "$device" --amp $(args "$amp_configs") $extra \
    | tee "$out/bench-$device-amp.jsonl"
# shellcheck disable=SC2086
timeout 60 python3 -m benchmarks --device "$device" --config 'data*' | tee "$out/bench-$device-data.jsonl"
