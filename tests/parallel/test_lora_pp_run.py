"""A LoRA run (model.init_from + model.lora) under torchrun with parallel.pp = 2 equals one process:
every stage keeps its adapters and trains only them; the run's model.safetensors, adapter.safetensors +
adapter_config.json and `fastlm merge` equal the single process's; its sharded checkpoint resumes exactly.
Also pp 2 x dp 2 and pp 2 x tp 2 (slow)."""
from __future__ import annotations

import json
import shutil

import pytest
import safetensors.torch
import torch

from fastlm.train import Trainer
from fastlm.train.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from tests.parallel.test_trainer_dp import COMMON, _assert_same_run, _torchrun, _weights
from tests.train.train_helpers import micro_config

LORA = "model.lora={rank = 4, alpha = 8.0}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(the base run, the one-process LoRA run on it)."""
    root = tmp_path_factory.mktemp("lora_pp")
    Trainer(micro_config(*COMMON), out_dir=root / "base", show_progress=False).fit()
    Trainer(micro_config(*COMMON, *_extra(root / "base")), out_dir=root / "single", show_progress=False).fit()
    return root / "base", root / "single"


def _extra(base):
    return [f"model.init_from={json.dumps(str(base))}", LORA]


def _same_adapter(a, b):
    assert json.loads((a / ADAPTER_CONFIG).read_text()) == json.loads((b / ADAPTER_CONFIG).read_text())
    wa, wb = safetensors.torch.load_file(a / ADAPTER_WEIGHTS), safetensors.torch.load_file(b / ADAPTER_WEIGHTS)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-4, rtol=1e-4, msg=k)


def test_pp2_lora_run_equals_one_process_resumes_and_merges(tmp_path, runs):
    from fastlm.cli import main

    base, single = runs
    out = tmp_path / "pp"
    r = _torchrun(out, [*_extra(base), "parallel.pp=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(out, single, atol=2e-5)
    w = _weights(out)
    assert any(k.endswith("lora_B") and w[k].abs().sum() > 0 for k in w)
    _same_adapter(out, single)
    for run, dest in ((out, "merged"), (single, "merged_single")):
        assert main(["merge", str(run), "--out", str(tmp_path / dest)]) == 0
    merged = safetensors.torch.load_file(tmp_path / "merged" / "model.safetensors")
    for k, v in safetensors.torch.load_file(tmp_path / "merged_single" / "model.safetensors").items():
        torch.testing.assert_close(merged[k], v, atol=2e-5, rtol=1e-4, msg=k)
    # step 2's sharded checkpoint resumes (pp = 2) to the same end
    shutil.rmtree(out / "checkpoints" / "step_0000004")
    (out / "model.safetensors").unlink()
    r = _torchrun(out, [*_extra(base), "parallel.pp=2"], resume=True)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(out, single, atol=2e-5)
    _same_adapter(out, single)


def test_pp2_lora_run_on_an_int8_base_equals_one_process(tmp_path, runs):
    """model.lora.base = "int8": each stage quantizes its own blocks as one process does."""
    base, _ = runs
    extra = [f"model.init_from={json.dumps(str(base))}", "model.lora={rank = 4, alpha = 8.0, base = \"int8\"}"]
    single, out = tmp_path / "single", tmp_path / "pp"
    Trainer(micro_config(*COMMON, *extra), out_dir=single, show_progress=False).fit()
    r = _torchrun(out, [*extra, "parallel.pp=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(out, single, atol=2e-5)
    assert _weights(out)["blocks.1.mlp.fc.weight"].dtype == torch.int8
    _same_adapter(out, single)


@pytest.fixture(scope="module")
def runs8(tmp_path_factory):
    """runs() with a global batch of 8 (a base run's config must fit the 4 processes that load it)."""
    root = tmp_path_factory.mktemp("lora_pp8")
    Trainer(micro_config(*COMMON, *BATCH8), out_dir=root / "base", show_progress=False).fit()
    Trainer(micro_config(*COMMON, *BATCH8, *_extra(root / "base")), out_dir=root / "single", show_progress=False).fit()
    return root / "base", root / "single"


BATCH8 = ["train.global_batch_size=8"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["parallel.dp=2", "train.micro_batch_size=1"],
                                   ["parallel.tp=2", "parallel.sequence_parallel=true"]], ids=["pp2-dp2", "pp2-tp2"])
def test_pp2_times_another_mode_lora_run_equals_one_process(tmp_path, runs8, extra):
    base, single = runs8
    out = tmp_path / "run"
    r = _torchrun(out, [*BATCH8, *_extra(base), "parallel.pp=2", *extra], nproc=4, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(out, single, atol=1e-4)
    _same_adapter(out, single)
