"""`torchrun ... -m fastlm train --set parallel.pp=2` equals the single-process run; config checks."""
from __future__ import annotations

import pytest
import torch

from fastlm.train import Trainer
from fastlm.train.config import ConfigError
from tests.parallel.test_trainer_dp import _losses, _torchrun, _weights
from tests.train.train_helpers import micro_config

COMMON = ["model.dropout=0.0", "train.steps=4", "checkpoint.every=0", "train.eval_every=2"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    Trainer(micro_config(*COMMON), out_dir=out, show_progress=False).fit()
    return out


@pytest.mark.parametrize("extra", [["parallel.schedule=\"1f1b\""],
                                   ["parallel.schedule=\"interleaved\"", "parallel.virtual_stages=2",
                                    "model.n_layer=4", "train.activation_checkpointing=true"]],
                         ids=["1f1b", "interleaved-ckpt"])
def test_torchrun_pp2_equals_one_process(tmp_path, single, extra):
    reference = single
    if "model.n_layer=4" in extra:
        reference = tmp_path / "single4"
        Trainer(micro_config(*COMMON, "model.n_layer=4"), out_dir=reference, show_progress=False).fit()
    r = _torchrun(tmp_path / "run", ["parallel.pp=2", *extra], nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _losses(tmp_path / "run") == pytest.approx(_losses(reference), rel=1e-5)
    wa, wb = _weights(tmp_path / "run"), _weights(reference)
    assert set(wa) == set(wb)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=2e-5, rtol=1e-4, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("nproc,extra", [(4, ["parallel.tp=2", "parallel.sequence_parallel=true"]),
                                         (8, ["parallel.tp=2", "parallel.dp=2", "train.micro_batch_size=1"])],
                         ids=["tp2-pp2", "dp2-tp2-pp2"])
def test_torchrun_3d_equals_one_process(tmp_path, single, nproc, extra):
    r = _torchrun(tmp_path / "run", ["parallel.pp=2", "checkpoint.every=4", *extra], nproc=nproc, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _losses(tmp_path / "run") == pytest.approx(_losses(single), rel=1e-5)
    wa, wb = _weights(tmp_path / "run"), _weights(single)
    for k in wb:  # tensor parallel alone differs from one process by about 2e-5 here (fp32 sums)
        torch.testing.assert_close(wa[k], wb[k], atol=1e-4, rtol=1e-4, msg=k)


def test_pipeline_checkpoint_resumes_in_one_process(tmp_path, single):
    """A pp = 2 run checkpointed at step 2 of 4 (sharded, every stage its part) resumed by one
    process equals the single-process run all along."""
    import shutil

    out = tmp_path / "run"
    r = _torchrun(out, ["parallel.pp=2", "checkpoint.every=2"], nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000002", "step_0000004"]
    shutil.rmtree(out / "checkpoints" / "step_0000004")
    Trainer(micro_config(*COMMON, "checkpoint.every=2"), out_dir=out, resume=True, show_progress=False).fit()
    assert _losses(out) == pytest.approx(_losses(single), rel=1e-5)
    wa, wb = _weights(out), _weights(single)
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], atol=2e-5, rtol=1e-4, msg=k)


@pytest.mark.parametrize("sets,message", [
    (["parallel.pp=4", "model.n_layer=2"], r"4 \* 1 = 4 pipeline stages, more than model.n_layer = 2"),
    (["parallel.pp=2", "parallel.schedule=\"interleaved\"", "parallel.virtual_stages=2", "model.n_layer=2"],
     r"2 \* 2 = 4 pipeline stages, more than model.n_layer = 2"),
    (["parallel.pp=4", "model.n_layer=4", "parallel.schedule=\"interleaved\"", "train.global_batch_size=4",
      "train.micro_batch_size=2"], r"2 micro-batches per step .* must be a multiple of parallel.pp = 4"),
    (["parallel.pp=2", "parallel.virtual_stages=2"], r"virtual_stages = 2: only used with parallel.schedule"),
    (["parallel.pp=2", "parallel.schedule=\"zb\""], r"parallel.schedule = \"zb\": expected one of gpipe, 1f1b"),
    (["parallel.pp=2", "parallel.stage_layers=[1, 2]"], r"stage_layers = \[1, 2\]: expected positive layer counts "
                                                        r"that add up to model.n_layer = 2"),
    (["parallel.pp=2", "parallel.stage_layers=[2]"], r"expected 2 entries"),
    (["parallel.pp=2", "parallel.stage_balance=\"flops\""], r"stage_balance = \"flops\": expected one of"),
])
def test_invalid_pipeline_layouts_are_rejected(sets, message):
    with pytest.raises(ConfigError, match=message):
        micro_config(*sets)
