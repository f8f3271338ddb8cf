"""Distillation under data parallelism: `torchrun --nproc-per-node 2 -m fastlm distill` equals one process.

Online (each rank runs the teacher on its own share) and offline (a store written once by one process,
read by both ranks, with uneven dp_shares and another micro-batch size), plus ZeRO-1.
"""
from __future__ import annotations

import os
import subprocess

import pytest
import torch

from fastlm.train import Trainer
from tests.parallel.dist_helpers import free_port
from tests.parallel.test_trainer_dp import COMMON, TORCHRUN, _sets, _weights
from tests.train.train_helpers import MICRO, micro_config

KEYS = ["model.n_layer=1", "distill.top_k=6", "distill.temperature=1.5", "distill.alpha=0.6"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    Trainer(micro_config("train.steps=3", "train.eval_every=0"), out_dir=out, show_progress=False).fit()
    return out


def _student_keys(teacher_dir, *extra):
    return [*COMMON, *KEYS, f"distill.teacher={teacher_dir}", f"data.tokenizer={teacher_dir}/tokenizer.json", *extra]


@pytest.fixture(scope="module")
def single(tmp_path_factory, teacher):
    out = tmp_path_factory.mktemp("single") / "run"
    Trainer(micro_config(*_student_keys(teacher)), out_dir=out, show_progress=False).fit()
    return out


def _distill_dp2(out, keys, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "fastlm", "distill", "tiny",
           "--out", str(out), "--quiet", *_sets([*MICRO, *keys])]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.parametrize("extra", [[], ["parallel.shard_optimizer=true", "parallel.bucket_mb=0.01"]],
                         ids=["plain", "zero1"])
def test_online_teacher_dp2_equals_one_process(tmp_path, teacher, single, extra):
    r = _distill_dp2(tmp_path / "run", _student_keys(teacher, *extra))
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_weights(single, tmp_path / "run")


def test_offline_store_of_one_process_read_by_dp2_with_shares(tmp_path, teacher, single):
    from fastlm.cli import main

    store = tmp_path / "store"
    assert main(["distill", "tiny", *_sets([*MICRO, *_student_keys(teacher)]), "--save-teacher", str(store),
                 "--quiet"]) == 0
    keys = _student_keys(teacher, "distill.teacher=", f"distill.teacher_store={store}", "parallel.dp_shares=[3, 1]",
                         "train.micro_batch_size=1")
    r = _distill_dp2(tmp_path / "run", keys)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_weights(single, tmp_path / "run")
