"""DataParallel on 2 and 3 gloo processes equals one process on the same global batch.

Each world runs every scenario in one launch (module fixtures), so the file stays fast.
"""
from __future__ import annotations

import pytest
import torch

from tests.parallel import workers
from tests.parallel.dist_helpers import run_world

SCENARIOS_2 = {
    "plain": {},
    "accum": {"accum": 3},
    "no_overlap": {"overlap": False, "accum": 3},
    "one_bucket": {"bucket_mb": 25},
    "bf16": {"reduce": "bf16"},
    "fp16": {"reduce": "fp16", "accum": 3},
    "shard": {"shard": True},
    "shard_accum_bf16": {"shard": True, "accum": 3, "reduce": "bf16"},
    "shares": {"shares": [3, 1]},
    "shares_shard": {"shares": [3, 1], "shard": True},
    "ddp": {"wrapper": "ddp"},
    "ddp_accum": {"wrapper": "ddp", "accum": 3},
    "local_sgd_1": {"local_sgd": 1},
    "local_sgd_2": {"local_sgd": 2, "steps": 4},
}
SCENARIOS_3 = {
    "plain": {},
    "accum": {"accum": 2},
    "shard": {"shard": True},
    "shares": {"shares": [1, 2, 3], "accum": 2},
    "ddp": {"wrapper": "ddp"},
    "bf16": {"reduce": "bf16", "shard": True},
    "save": {"shard": True, "steps": 2, "save_after": 2},
}


def _run_all(rank, world, scenarios):
    return {name: workers.train_gpt(rank, world, spec) for name, spec in scenarios.items()}


@pytest.fixture(scope="module")
def reference():
    return workers.train_gpt(0, 1, {"wrapper": "none"})


@pytest.fixture(scope="module")
def world2():
    return run_world(_run_all, 2, SCENARIOS_2, timeout=150)


@pytest.fixture(scope="module")
def world3():
    return run_world(_run_all, 3, SCENARIOS_3, timeout=150)


def _close(result, ref, atol, rtol=1e-5):
    assert result["losses"] == pytest.approx(ref["losses"], rel=rtol, abs=atol)
    for name, value in ref["params"].items():
        torch.testing.assert_close(result["params"][name], value, atol=atol, rtol=rtol, msg=name)


@pytest.mark.parametrize("name", ["plain", "accum", "no_overlap", "one_bucket", "shard", "shares", "shares_shard",
                                  "local_sgd_1"])
def test_dp2_equals_one_process(world2, reference, name):
    for rank in range(2):
        _close(world2[rank][name], reference, atol=2e-5)


@pytest.mark.parametrize("name", ["plain", "accum", "shard", "shares"])
def test_dp3_equals_one_process(world3, reference, name):
    for rank in range(3):
        _close(world3[rank][name], reference, atol=2e-5)


@pytest.mark.parametrize("world, name", [(2, "bf16"), (2, "fp16"), (2, "shard_accum_bf16"), (3, "bf16")])
def test_16bit_reduce_trains_like_one_process(world2, world3, reference, world, name):
    results = world2 if world == 2 else world3
    for rank in range(world):
        assert results[rank][name]["losses"] == pytest.approx(reference["losses"], rel=1e-3)
    # the ranks still agree exactly (every rank gets the same reduced gradient)
    for k, v in results[0][name]["params"].items():
        assert torch.equal(v, results[world - 1][name]["params"][k]), k


@pytest.mark.parametrize("reduce, eps", [("bf16", 2.0**-8), ("fp16", 2.0**-11)])
def test_16bit_reduce_gradient_error_is_that_of_16_bits(reduce, eps):
    grads = run_world(workers.grad_probe, 2, reduce, False, timeout=60)
    model = workers.small_gpt()
    x = workers.data()[0]
    model(x, labels=x)[1].backward()
    worst = 0.0
    for name, p in model.named_parameters():
        ref, got = p.grad, grads[0][name]
        assert torch.equal(got, grads[1][name])
        scale = ref.abs().max().item()
        err = (got - ref).abs().max().item()
        worst = max(worst, err / scale)
        # two roundings (each rank's part, the sum) of the 16-bit format, relative to the tensor's range
        assert err <= 4 * eps * scale + 1e-7, (name, err, scale)
    assert worst > 0  # it did communicate in 16 bits


@pytest.mark.parametrize("world, ours, theirs", [(2, "plain", "ddp"), (2, "accum", "ddp_accum"), (3, "plain", "ddp")])
def test_same_as_torch_ddp(world2, world3, world, ours, theirs):
    results = world2 if world == 2 else world3
    for rank in range(world):
        _close(results[rank][ours], results[rank][theirs], atol=1e-5)


def test_sharded_optimizer_holds_a_shard(world2, world3):
    full = world2[0]["plain"]["opt_numel"]
    assert full > 0
    for results, world in ((world2, 2), (world3, 3)):
        shard = [results[r]["shard"]["opt_numel"] for r in range(world)]
        assert sum(shard) >= full and max(shard) <= full / world * 1.2, (shard, full)


def test_local_sgd(world2, reference):
    # H = 1 is synchronous training exactly
    for rank in range(2):
        for k, v in world2[rank]["local_sgd_1"]["params"].items():
            assert torch.equal(v, world2[rank]["plain"]["params"][k]), k
    # H = 2: the ranks differ between syncs but agree right after each one
    r0, r1 = world2[0]["local_sgd_2"], world2[1]["local_sgd_2"]
    assert len(r0["after_sync"]) == 2
    for a, b in zip(r0["after_sync"], r1["after_sync"]):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert r0["losses"][0] == pytest.approx(reference["losses"][0], rel=1e-5)


def test_sharded_checkpoint_loads_into_another_dp_size(world3):
    """Saved at step 2 by dp=3 (sharded); continued with dp=2 (sharded) == dp=3 going on."""
    saved = world3[0]["save"]["saved"]
    assert saved["optimizer"]["format"] == "fastlm-zero1" and len(saved["optimizer"]["shards"]) == 3
    cont = run_world(workers.train_gpt, 2, {"shard": True, "load": saved, "first_step": 2, "steps": 1}, timeout=90)
    straight = workers.train_gpt(0, 1, {"wrapper": "none"})  # 3 steps in one process
    for rank in range(2):
        for k, v in straight["params"].items():
            torch.testing.assert_close(cont[rank]["params"][k], v, atol=2e-5, rtol=1e-5, msg=k)


def test_overlap_is_real_and_buckets_follow_the_backward():
    steps = run_world(workers.overlap_probe, 2, timeout=60)[0]
    for step in steps:
        assert len(step["issued"]) >= 3  # several buckets
        # the first bucket's all-reduce started while gradients were still being accumulated
        assert step["issued"][0] < step["backward_done"] == step["total"]
    # after the first step the buckets are laid out in the observed order of the backward
    flat = [n for bucket in steps[1]["buckets"] for n in bucket]
    assert flat == steps[0]["order"]
    assert steps[1]["issued"] == sorted(steps[1]["issued"])


def test_unused_parameters():
    results = run_world(workers.unused_probe, 2, False, timeout=60, allow_errors=True)
    for res in results:
        assert "unused.weight" in res["error"] and "find_unused=True" in res["error"]
    grads = run_world(workers.unused_probe, 2, True, timeout=60)
    ref = torch.nn.Linear(4, 4)
    expected = (torch.ones(2, 4) * 1.5).sum(0)  # d sum(Wx)/dW: rows are the mean input
    assert torch.allclose(grads[0], expected.expand(4, 4)) and torch.equal(grads[0], grads[1])
    del ref


@pytest.mark.parametrize("what, text", [("config", "rank 2 has different config"),
                                        ("weights", "rank 2 has different initial weights")])
def test_ranks_must_agree(what, text):
    results = run_world(workers.mismatch_probe, 3, what, timeout=60, allow_errors=True)
    for res in results:
        assert text in res.get("error", ""), res
