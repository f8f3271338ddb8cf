#!/usr/bin/env bash
# One prepared run for a GPU machine (e.g. the H200 lent to some sessions): build for its
# architecture, run the CUDA tests without the Triton interpreter, then the GPU benchmarks.
# Usage: bash benchmarks/device_check.sh [OUT_DIR]    (results are also printed)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/fastlm-device-check}}"
mkdir -p "$out"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
python -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -n 3
FASTLM_REQUIRE_NATIVE=1 python -m pytest -q -x tests/gpu 2>&1 | tail -n 15 | tee "$out/tests.txt"
python benchmarks/attention.py --device cuda --dtype bf16 --head-dims 64 128 --json "$out/attention.jsonl" \
  2>&1 | tee "$out/attention.txt"
