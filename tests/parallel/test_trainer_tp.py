"""`torchrun ... -m fastlm train --set parallel.tp=2` equals the single-process run, and its
checkpoints resume at another layout (tp 2 -> one process, one process -> tp 2)."""
from __future__ import annotations

import shutil

import pytest

from fastlm.train import Trainer
from fastlm.train.run import load_run
from fastlm.train.sharded_checkpoint import is_sharded_checkpoint
from tests.parallel.test_trainer_dp import COMMON, _assert_same_run, _torchrun
from tests.train.train_helpers import micro_config

TP = ["parallel.tp=2", "parallel.sequence_parallel=true"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    Trainer(micro_config(*COMMON), out_dir=out, show_progress=False).fit()
    return out


def test_torchrun_tp2_equals_one_process_and_resumes_on_one(tmp_path, single):
    out = tmp_path / "run"
    r = _torchrun(out, TP, nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(out, single, atol=1e-4)  # fp32 sums in another order, through AdamW
    assert is_sharded_checkpoint(out / "checkpoints" / "step_0000002")
    load_run(out)  # the finished run's weights are a plain model's: eval / generate on one process
    # step 2's sharded checkpoint, resumed by one process (tp = 1), finishes like the single run
    shutil.rmtree(out / "checkpoints" / "step_0000004")
    (out / "model.safetensors").unlink()
    _, model, _ = load_run(out)  # an unfinished tp run: eval / generate read its latest sharded checkpoint
    assert model.tok_emb.weight.abs().sum() > 0
    Trainer(micro_config(*COMMON), out_dir=out, resume=True, show_progress=False).fit()
    _assert_same_run(out, single, atol=1e-4)  # fp32 sums in another order, through AdamW


def test_one_process_checkpoint_resumes_at_tp2(tmp_path, single):
    out = tmp_path / "run"
    shutil.copytree(single, out)
    shutil.rmtree(out / "checkpoints" / "step_0000004")
    (out / "model.safetensors").unlink()
    r = _torchrun(out, TP, nproc=2, resume=True)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(out, single, atol=1e-4)  # fp32 sums in another order, through AdamW


def test_tp_layout_error_at_start(tmp_path):
    r = _torchrun(tmp_path / "run", ["parallel.tp=3"], nproc=3)
    assert r.returncode != 0 and "parallel.tp = 3 does not divide model.n_head = 4" in r.stderr
    assert not (tmp_path / "run").exists()
