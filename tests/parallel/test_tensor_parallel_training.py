"""Whole-model tensor parallelism (gloo processes): tp = 2 and dp = 2 x tp = 2 train to the same
losses, gradient norms and parameters as one process, GPT-2 style (tied embeddings, biases,
GELU, an odd vocabulary) and LLaMA style (SwiGLU, GQA with 1 kv head < tp: replicated K/V),
with and without sequence parallel."""
import pytest
import torch

from tests.parallel import tp_workers
from tests.parallel.dist_helpers import run_world

_REFS = {}


def reference(family):
    if family not in _REFS:
        _REFS[family] = run_world(tp_workers.train, 1, {"family": family}, timeout=120)[0]
    return _REFS[family]


def assert_same(ref, got, tol=2e-5):
    for rank, g in enumerate(got):
        assert g["losses"] == pytest.approx(ref["losses"], abs=tol), rank
        assert g["norms"] == pytest.approx(ref["norms"], rel=tol), rank
        assert set(g["params"]) == set(ref["params"])
        for k, v in ref["params"].items():
            torch.testing.assert_close(g["params"][k], v, atol=tol, rtol=1e-4, msg=lambda m: f"rank {rank} {k}: {m}")


@pytest.mark.parametrize("family,world,sp,extra", [
    ("gpt2", 2, False, {}),
    pytest.param("gpt2", 2, True, {}, marks=pytest.mark.slow),
    pytest.param("llama", 2, False, {}, marks=pytest.mark.slow),
    ("llama", 2, True, {}),
    ("llama", 4, True, {"recompute": True}),              # dp 2 x tp 2, activation checkpointing
    ("gpt2", 4, False, {"shard": True, "accum": 2}),      # dp 2 x tp 2, ZeRO-1, gradient accumulation
])
def test_tp_training_equals_one_process(family, world, sp, extra):
    got = run_world(tp_workers.train, world, {"family": family, "tp": 2, "sp": sp, **extra}, timeout=240)
    assert_same(reference(family), got)
