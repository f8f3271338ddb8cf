#!/usr/bin/env bash
# One prepared run for a single GPU (the target is an H200: Python 3.12, no network), all within
# about 8 minutes: build for its architecture, run the CUDA/Triton tests for real (no interpreter),
# then the GPU benchmarks against their baselines in the same run (attention vs torch SDPA, fp16 GEMM
# vs cuBLAS, int8 vs torch._int_mm, training tokens/s and MFU vs plain PyTorch and HF).
# Usage: bash benchmarks/gpu_check.sh OUT_DIR      (results.json, PNGs and logs land in OUT_DIR)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/fastlm-gpu-check}}"
mkdir -p "$out"
py="${PYTHON:-python}"
step() { echo "== $1 ($(date +%T))"; }

step environment
$py -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())" \
  | tee "$out/environment.txt"

step "build (sm_90 only, to stay fast)"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
timeout 240 $py -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -n 5 | tee "$out/build.txt"

step "CUDA and Triton tests"
FASTLM_REQUIRE_NATIVE=1 timeout 180 $py -m pytest -q -x -p no:cacheprovider tests/gpu 2>&1 | tail -n 20 | tee "$out/tests.txt"

step "optimizer offload (pinned CPU AdamW states for CUDA parameters)"
FASTLM_REQUIRE_NATIVE=1 timeout 120 $py -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_offload.py \
  tests/gpu/test_cuda_adamw.py 2>&1 | tail -n 5 | tee "$out/offload.txt"

step "benchmarks"
timeout 300 $py -m fastlm bench attention matmul train_throughput --device cuda --quick --out "$out" 2>&1 \
  | tee "$out/bench.txt" | tail -n 40
step done
