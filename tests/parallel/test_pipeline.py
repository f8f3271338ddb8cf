"""Pipeline parallelism on gloo processes equals one process: losses and parameters after k steps.

The models run in float64 so that the comparison is tight (the order of the gradient sums differs:
the pipeline adds a tied embedding's two gradients once per step, one process once per micro-batch).
"""
from __future__ import annotations

import pytest
import torch

from tests.parallel.dist_helpers import run_world
from tests.parallel.pipeline_workers import G, save_pipeline_checkpoint, small_gpt, train_pipeline

F64 = torch.float64


def _reference(spec):
    keys = ("family", "n_layer", "mbs", "ckpt", "dtype", "steps")
    return train_pipeline(0, 1, {k: v for k, v in spec.items() if k in keys} | {"pp": 1})


def _assert_same(out, ref, atol=1e-8):
    # The reported loss goes through fp32 (the data-parallel mean), the parameters stay float64.
    assert out["losses"] == pytest.approx(ref["losses"], rel=1e-6)
    assert set(out["params"]) == set(ref["params"])
    for k, v in ref["params"].items():
        torch.testing.assert_close(out["params"][k], v, atol=atol, rtol=0, msg=k)


slow = pytest.mark.slow
CASES = [  # (spec, processes); activation checkpointing and explicit stage layers ride along
    pytest.param({"pp": 2, "schedule": "gpipe", "stage_layers": [1, 3]}, 2, id="gpipe-pp2"),
    pytest.param({"pp": 2, "schedule": "1f1b", "ckpt": True}, 2, id="1f1b-pp2-ckpt", marks=slow),
    pytest.param({"pp": 2, "schedule": "interleaved", "v": 2, "ckpt": True, "family": "llama"}, 2,
                 id="interleaved-pp2-v2-ckpt"),
    pytest.param({"pp": 4, "schedule": "1f1b", "family": "llama", "mbs": 1}, 4, id="1f1b-pp4-llama"),
    pytest.param({"pp": 4, "schedule": "gpipe", "family": "llama", "mbs": 1}, 4, id="gpipe-pp4-llama", marks=slow),
    pytest.param({"pp": 4, "schedule": "interleaved", "v": 2, "n_layer": 8}, 4, id="interleaved-pp4-v2",
                 marks=slow),
]


@pytest.mark.parametrize("spec,world", CASES)
def test_pipeline_equals_one_process(spec, world):
    spec = {**spec, "dtype": F64}
    outs = run_world(train_pipeline, world, spec, timeout=240)
    _assert_same(outs[0], _reference(spec))
    if "stage_layers" in spec:
        assert outs[0]["stage_layers"] == spec["stage_layers"]
    # The schedule's activation memory: the first stage holds pp micro-batches in 1F1B, all in GPipe.
    m, pp = G // spec.get("mbs", 2), spec["pp"]
    peaks = [o["peak_live"][0] for o in outs]
    if spec["schedule"] == "gpipe":
        assert peaks == [m] * pp
    elif spec["schedule"] == "1f1b":
        assert peaks == [min(pp - r, m) for r in range(pp)] and peaks[0] == pp < m
    for o in outs[1:]:  # every rank reports the same (global) loss
        assert o["losses"] == outs[0]["losses"]


@pytest.mark.parametrize("schedule", ["interleaved", pytest.param("1f1b", marks=slow)])
def test_data_parallel_x_pipeline(schedule):
    # dp = 2 x pp = 2: each stage's gradients are averaged over its dp group (DataParallel).
    spec = {"pp": 2, "schedule": schedule, "v": 2 if schedule == "interleaved" else 1, "mbs": 1, "dtype": F64}
    _assert_same(run_world(train_pipeline, 4, spec, timeout=240)[0], _reference(spec))


@slow
def test_float32_pipeline():
    spec = {"pp": 2, "schedule": "1f1b"}
    _assert_same(run_world(train_pipeline, 2, spec, timeout=180)[0], _reference(spec), atol=5e-5)


def test_tensor_x_pipeline():
    pytest.importorskip("fastlm.parallel.tensor")
    # tp = 2 x pp = 2, sequence parallel (the activations between stages hold half of each sequence)
    spec = {"pp": 2, "tp": 2, "schedule": "interleaved", "v": 2, "sp": True, "family": "llama", "dtype": F64}
    _assert_same(run_world(train_pipeline, 4, spec, timeout=300)[0], _reference(spec), atol=1e-5)


def _load_one_process(path, spec):
    from fastlm.parallel.tensor.checkpoint import load_sharded

    model = small_gpt(spec.get("family", "gpt2"), spec.get("n_layer", 4)).to(spec.get("dtype", torch.float32))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    load_sharded(path, model)
    return model.state_dict()


@pytest.mark.parametrize("spec,world", [
    pytest.param({"pp": 2, "schedule": "interleaved", "v": 2}, 2, id="pp2"),
    pytest.param({"pp": 2, "tp": 2, "family": "llama"}, 4, id="tp2-pp2", marks=slow),
    pytest.param({"pp": 2, "tp": 2, "family": "llama"}, 8, id="dp2-tp2-pp2", marks=slow),
])
def test_pipeline_checkpoint_reshards_to_one_process_and_other_layouts(tmp_path, spec, world):
    pytest.importorskip("fastlm.parallel.tensor.checkpoint")
    spec = {**spec, "steps": 2, "path": str(tmp_path / "ckpt")}
    saved = run_world(save_pipeline_checkpoint, world, spec, timeout=300)[0]["params"]
    loaded = _load_one_process(tmp_path / "ckpt", spec)
    assert set(loaded) == set(saved)
    for k, v in saved.items():
        assert torch.equal(loaded[k], v), k
    if world > 2:
        return
    # ... and at another pipeline layout (pp = 4, another schedule): the same weights, nothing trained
    other = {"pp": 4, "schedule": "1f1b", "family": spec.get("family", "gpt2"), "steps": 0,
             "load_from": str(tmp_path / "ckpt")}
    again = run_world(train_pipeline, 4, other, timeout=300)[0]["params"]
    for k, v in saved.items():
        assert torch.equal(again[k], v), k


@pytest.mark.slow
def test_3d_dp2_tp2_pp2():
    pytest.importorskip("fastlm.parallel.tensor")
    spec = {"pp": 2, "tp": 2, "schedule": "1f1b", "family": "llama", "dtype": F64}
    _assert_same(run_world(train_pipeline, 8, spec, timeout=600)[0], _reference(spec), atol=1e-5)
