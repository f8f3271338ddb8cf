"""A LoRA run (model.init_from + model.lora) under torchrun with parallel.tp = 2 (and sequence parallel)
equals one process: losses, model.safetensors, and adapter.safetensors + adapter_config.json (the full
A and B gathered over the tp ranks); its sharded checkpoints hold the adapters and resume exactly
(also with adapter dropout: the tp ranks' dropout generators come back), and `fastlm merge` folds them."""
from __future__ import annotations

import json
import shutil

import safetensors.torch
import torch

from fastlm.train import Trainer
from fastlm.train.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from fastlm.train.sharded_checkpoint import is_sharded_checkpoint
from tests.parallel.test_trainer_dp import COMMON, _assert_same_run, _losses, _torchrun, _weights
from tests.train.train_helpers import micro_config

from tests.parallel import test_trainer_tp
from tests.parallel.test_trainer_tp import TP

LORA = "model.lora={rank = 4, alpha = 8.0}"
base = test_trainer_tp.single  # a fixture: the finished base run (one process) the LoRA runs start from


def _adapter(run):
    return safetensors.torch.load_file(run / ADAPTER_WEIGHTS), json.loads((run / ADAPTER_CONFIG).read_text())


def test_tp2_lora_run_equals_one_process_resumes_and_merges(tmp_path, base):
    extra = [f"model.init_from={json.dumps(str(base))}", LORA]
    one = tmp_path / "single"
    Trainer(micro_config(*COMMON, *extra), out_dir=one, show_progress=False).fit()
    out = tmp_path / "tp"
    r = _torchrun(out, [*extra, *TP])
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(out, one, atol=1e-4)
    w = _weights(out)
    assert any(k.endswith("lora_B") and w[k].abs().sum() > 0 for k in w)
    (a, config_a), (b, config_b) = _adapter(one), _adapter(out)
    assert config_a == config_b and a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-4, msg=k)
    # the sharded checkpoint of step 2 holds the adapters and resumes (at tp = 2) to the same end
    ckpt = out / "checkpoints" / "step_0000002"
    assert is_sharded_checkpoint(ckpt)
    shutil.rmtree(out / "checkpoints" / "step_0000004")
    (out / "model.safetensors").unlink()
    r = _torchrun(out, [*extra, *TP], resume=True)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(out, one, atol=1e-4)
    from fastlm.cli import main

    for run, dest in ((out, "merged"), (one, "merged_single")):
        assert main(["merge", str(run), "--out", str(tmp_path / dest)]) == 0
    merged = safetensors.torch.load_file(tmp_path / "merged" / "model.safetensors")
    assert not any("lora" in k for k in merged)
    assert not torch.equal(merged["blocks.0.attn.qkv.weight"], w["blocks.0.attn.qkv.weight"])
    for k, v in safetensors.torch.load_file(tmp_path / "merged_single" / "model.safetensors").items():
        torch.testing.assert_close(merged[k], v, atol=1e-4, rtol=1e-4, msg=k)


def test_tp2_lora_dropout_resume_is_exact(tmp_path, base):
    """Adapter dropout under tp: the resumed run draws the masks the uninterrupted one drew."""
    extra = [f"model.init_from={json.dumps(str(base))}", "model.lora={rank = 4, alpha = 8.0, dropout = 0.3}", *TP]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    r = _torchrun(full, extra)
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000004")
    (resumed / "model.safetensors").unlink()
    r = _torchrun(resumed, extra, resume=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _losses(resumed) == _losses(full)
    for k, v in _weights(full).items():
        assert torch.equal(_weights(resumed)[k], v), k


def test_one_process_lora_checkpoint_resumes_at_tp2(tmp_path, base):
    """A tp = 1 checkpoint (model.safetensors + optimizer.pt of the adapters only) resumed at tp = 2."""
    extra = [f"model.init_from={json.dumps(str(base))}", LORA]
    one = tmp_path / "single"
    Trainer(micro_config(*COMMON, *extra), out_dir=one, show_progress=False).fit()
    out = tmp_path / "run"
    shutil.copytree(one, out)
    shutil.rmtree(out / "checkpoints" / "step_0000004")
    (out / "model.safetensors").unlink()
    r = _torchrun(out, [*extra, *TP], resume=True)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(out, one, atol=1e-4)


def test_tp2_lora_run_on_an_int8_base_equals_one_process(tmp_path, base):
    """model.lora.base = "int8": the full weights quantized, then split (rows and their scales, or columns)."""
    extra = [f"model.init_from={json.dumps(str(base))}", "model.lora={rank = 4, alpha = 8.0, base = \"int8\"}"]
    one, out = tmp_path / "single", tmp_path / "tp"
    Trainer(micro_config(*COMMON, *extra), out_dir=one, show_progress=False).fit()
    r = _torchrun(out, [*extra, *TP])
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(out, one, atol=1e-4)
    assert _weights(out)["blocks.0.attn.qkv.weight"].dtype == torch.int8
    (a, config_a), (b, config_b) = _adapter(one), _adapter(out)
    assert config_a == config_b
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-4, msg=k)
    shutil.rmtree(out / "checkpoints" / "step_0000004")  # its sharded checkpoint holds the int8 base too
    (out / "model.safetensors").unlink()
    r = _torchrun(out, [*extra, *TP], resume=True)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(out, one, atol=1e-4)
