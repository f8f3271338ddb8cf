# Two commands work on a fresh clone: `make train` and `make test`. Each sets up ./.venv first
# (reused while pyproject.toml, setup.py, CMakeLists.txt and csrc/ are unchanged).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastlm-installed
NATIVE_SOURCES := $(shell find csrc -type f 2>/dev/null)
# The CPU build of torch that lies on this machine's disk; the `torch>=2.6` requirement then adds nothing.
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.PHONY: setup train test test-fast test-triton bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py CMakeLists.txt $(NATIVE_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q "setuptools>=68" wheel "cmake>=3.18" ninja
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $@

# Two data-parallel processes on CPU (gloo), one thread each.
train: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/torchrun --nproc-per-node 2 -m fastlm train tiny $(ARGS)

# Unit and integration tests (native kernels required), then the Triton kernels under the
# interpreter in their own process. Slow sweeps are marked `slow` and skipped here.
test: setup
	FASTLM_REQUIRE_NATIVE=1 $(PY) -m pytest -q -m "not slow and not triton" $(ARGS)
	$(MAKE) --no-print-directory test-triton

test-triton: setup
	FASTLM_REQUIRE_NATIVE=1 TRITON_INTERPRET=1 $(PY) -m pytest -q -m triton tests/kernels

# Every benchmark suite against its baseline: bench-results/results.json, PNGs and a summary table.
bench: setup
	$(VENV)/bin/fastlm bench --out bench-results $(ARGS)

clean:
	rm -rf build *.egg-info fastlm/_C*.so
