"""LoRA adapters under tensor parallelism (gloo processes): tp = 2 and dp = 2 x tp = 2 train to the
same losses, gradient norms, adapters and (frozen) base weights as one process, GPT-2 style (tied
vocab-parallel head, biases, GELU) and LLaMA style (SwiGLU, GQA with 1 kv head < tp), with and
without sequence parallel, adapting attn and mlp or attn only."""
import pytest
import torch

from tests.parallel import tp_encoder_workers, tp_workers
from tests.parallel.dist_helpers import run_world
from tests.parallel.test_tensor_parallel_training import assert_same

LORA = {"rank": 4, "alpha": 8.0, "targets": ("attn", "mlp")}
_REFS = {}


def reference(spec):
    key = repr(sorted(spec.items()))
    if key not in _REFS:
        _REFS[key] = run_world(tp_workers.train, 1, spec, timeout=120)[0]
    return _REFS[key]


INT8 = {**LORA, "base": "int8"}


@pytest.mark.parametrize("family,world,sp,lora,extra", [
    ("gpt2", 2, False, LORA, {}),
    ("llama", 2, True, LORA, {}),
    ("gpt2", 2, True, {**LORA, "targets": ("attn",)}, {}),
    ("llama", 4, False, LORA, {"accum": 2}),              # dp 2 x tp 2, gradient accumulation
    ("gpt2", 4, True, LORA, {"shard": True}),             # dp 2 x tp 2, ZeRO-1 over the adapters
    ("gpt2", 2, True, INT8, {}),                          # an int8 base: its rows / columns and scales split
    ("llama", 2, False, INT8, {"model": {"n_kv_head": 2}}),
])
def test_lora_tp_training_equals_one_process(family, world, sp, lora, extra):
    one = {"family": family, "lora": lora, "model": extra.pop("model", {})}
    got = run_world(tp_workers.train, world, {**one, "tp": 2, "sp": sp, **extra}, timeout=240)
    ref = reference(one)
    assert any(k.endswith(".lora_A") for k in ref["params"])
    assert_same(ref, got)
    start = reference({**one, "steps": 0})["params"]
    assert set(start) == set(ref["params"])
    for k, v in ref["params"].items():  # adapters moved, the base did not
        assert torch.equal(v, start[k]) != (".lora_" in k), k
    if lora.get("base") == "int8":
        assert ref["params"]["blocks.0.mlp.proj.weight"].dtype == torch.int8


def test_int8_base_with_fewer_kv_heads_than_tp_ranks_is_refused():
    got = run_world(tp_workers.train, 2, {"family": "llama", "lora": INT8, "tp": 2}, timeout=120, allow_errors=True)
    assert all("fewer kv heads (1) than tp ranks (2)" in r.get("error", "") for r in got), got


def test_adapter_dropout_masks_match_where_the_input_is_replicated():
    """A column layer's adapter input is the same on every tp rank: the same mask; a row layer's is split:
    independent masks."""
    masks = run_world(tp_workers.lora_dropout_masks, 2, timeout=120)
    assert sorted(masks[0]) == sorted(f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.proj",
                                                                                    "mlp.fc", "mlp.proj"))
    for name, (region, mask) in masks[0].items():
        other = masks[1][name][1]
        assert 0 < mask.float().mean() < 1, name
        assert region == ("sharded" if name.endswith("proj") else "replicated"), name
        assert torch.equal(mask, other) == (region == "replicated"), name


@pytest.mark.parametrize("family", ["bert", "albert"])  # ALBERT: one shared block (its adapters split once)
def test_encoder_lora_tp2_equals_one_process(family):
    spec = {"family": family, "lora": LORA}
    ref = run_world(tp_encoder_workers.train, 1, spec, timeout=120)[0]
    got = run_world(tp_encoder_workers.train, 2, {**spec, "tp": 2}, timeout=240)
    assert any(k.endswith(".lora_A") for k in ref["params"])
    assert_same(ref, got)
