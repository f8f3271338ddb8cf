"""LoRA adapters under tensor parallelism (gloo processes): tp = 2 and dp = 2 x tp = 2 train to the
same losses, gradient norms, adapters and (frozen) base weights as one process, GPT-2 style (tied
vocab-parallel head, biases, GELU) and LLaMA style (SwiGLU, GQA with 1 kv head < tp), with and
without sequence parallel, adapting attn and mlp or attn only."""
import pytest
import torch

from tests.parallel import tp_workers
from tests.parallel.dist_helpers import run_world
from tests.parallel.test_tensor_parallel_training import assert_same

LORA = {"rank": 4, "alpha": 8.0, "targets": ("attn", "mlp")}
_REFS = {}


def reference(family, lora):
    key = (family, tuple(sorted(lora.items())))
    if key not in _REFS:
        _REFS[key] = run_world(tp_workers.train, 1, {"family": family, "lora": lora}, timeout=120)[0]
    return _REFS[key]


@pytest.mark.parametrize("family,world,sp,lora,extra", [
    ("gpt2", 2, False, LORA, {}),
    ("llama", 2, True, LORA, {}),
    ("gpt2", 2, True, {**LORA, "targets": ("attn",)}, {}),
    ("llama", 4, False, LORA, {"accum": 2}),              # dp 2 x tp 2, gradient accumulation
])
def test_lora_tp_training_equals_one_process(family, world, sp, lora, extra):
    spec = {"family": family, "tp": 2, "sp": sp, "lora": lora, **extra}
    got = run_world(tp_workers.train, world, spec, timeout=240)
    ref = reference(family, lora)
    assert any(k.endswith(".lora_A") for k in ref["params"])
    assert_same(ref, got)
    start = run_world(tp_workers.train, 1, {"family": family, "lora": lora, "steps": 0}, timeout=120)[0]["params"]
    for k, v in ref["params"].items():  # adapters moved, the base did not
        assert torch.equal(v, start[k]) != (".lora_" in k), k
