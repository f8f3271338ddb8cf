"""DP-SGD in `fastlm train` / `fastlm finetune`: privacy.json, epsilon in metrics.jsonl, the budget
stop, resume, config errors, and 2 data-parallel processes equal to one (noise included)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from fastlm.privacy.accounting import epsilon
from fastlm.train import Trainer, load_config
from fastlm.train.errors import ConfigError
from fastlm.train.metrics import read_metrics
from tests.parallel.dist_helpers import free_port

MICRO = ["model.n_layer=2", "model.n_head=4", "model.n_kv_head=2", "model.d_model=32", "data.vocab_size=320",
         "data.seq_len=32", "data.builtin_modules=[]", "train.steps=6", "train.global_batch_size=8",
         "train.micro_batch_size=4", "train.lr=3e-3", "train.warmup_steps=1", "train.log_every=1",
         "train.eval_every=3", "train.eval_batches=2", "train.precision=fp32", "checkpoint.every=3",
         "privacy.dp_sgd=true", "privacy.max_grad_norm=0.5"]


def _run(out, *extra, resume=False):
    return Trainer(load_config("tiny", [*MICRO, *extra]), out_dir=out, show_progress=False, resume=resume).fit()


def test_private_run_records_its_guarantee(tmp_path):
    summary = _run(tmp_path / "run", "privacy.noise_multiplier=1.2", "privacy.delta=1e-4")
    info = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert info["steps"] == 6 and info["noise_multiplier"] == 1.2 and info["delta"] == 1e-4
    assert info["accountant"] == "rdp" and info["sampling"] == "poisson" and info["max_grad_norm"] == 0.5
    q = info["sample_rate"]
    assert q == pytest.approx(8 / info["num_samples"])
    assert info["epsilon"] == pytest.approx(epsilon(noise_multiplier=1.2, sample_rate=q, steps=6, delta=1e-4))
    evals = [r for r in read_metrics(tmp_path / "run") if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 3, 6]
    assert evals[0]["epsilon"] == 0 and 0 < evals[1]["epsilon"] < evals[2]["epsilon"] == pytest.approx(info["epsilon"])
    steps = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert all(0 <= r["dp_clipped_fraction"] <= 1 for r in steps)
    assert summary["step"] == 6


def test_target_epsilon_calibrates_the_noise(tmp_path):
    _run(tmp_path / "run", "privacy.target_epsilon=3.0", "privacy.sampling=shuffle", "privacy.accountant=prv")
    info = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert info["sampling"] == "shuffle" and info["accountant"] == "prv"
    assert 2.8 <= info["epsilon"] <= 3.0 and info["noise_multiplier"] > 0


def test_budget_stop_ends_the_run_early_with_a_message(tmp_path, capsys):
    summary = _run(tmp_path / "run", "privacy.noise_multiplier=0.6", "privacy.target_epsilon=1.5", "train.steps=200",
                   "train.eval_every=0", "checkpoint.every=0")
    info = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert 0 < summary["step"] < 200 and info["steps"] == summary["step"] and info["epsilon"] <= 1.5
    assert "another step would exceed privacy.target_epsilon = 1.5" in capsys.readouterr().out
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_resume_continues_exactly(tmp_path):
    _run(tmp_path / "full", "privacy.noise_multiplier=1.0")
    shutil.copytree(tmp_path / "full", tmp_path / "part")  # then make it a run killed after its step-3 checkpoint
    shutil.rmtree(tmp_path / "part" / "checkpoints" / "step_0000006")
    (tmp_path / "part" / "model.safetensors").unlink()
    _run(tmp_path / "part", "privacy.noise_multiplier=1.0", resume=True)
    a, b = (safetensors.torch.load_file(tmp_path / r / "model.safetensors") for r in ("full", "part"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("override,message", [
    (["privacy.max_grad_norm=0"], "privacy.max_grad_norm = 0"),
    ([], "needs privacy.noise_multiplier or privacy.target_epsilon"),
    (["privacy.noise_multiplier=1", "privacy.sampling=\"random\""], "privacy.sampling = \"random\""),
    (["privacy.noise_multiplier=1", "parallel.pp=2"], "does not combine with parallel.pp > 1"),
    (["privacy.noise_multiplier=1", "privacy.delta=2"], "privacy.delta = 2"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("tiny", [*MICRO, *override])


def test_recurrent_model_is_refused():
    with pytest.raises(ConfigError, match="does not combine with model.family"):
        load_config("lstm-tiny", ["privacy.dp_sgd=true", "privacy.noise_multiplier=1"])


def test_finetune_under_dp_sgd(tmp_path):
    from fastlm.tasks import finetune

    finetune("classification", "classification-demo", ["train.steps=4", "train.eval_every=0", "privacy.dp_sgd=true",
                                                       "privacy.noise_multiplier=1.0", "train.global_batch_size=16",
                                                       "train.micro_batch_size=8"],
             out_dir=tmp_path / "ft", show_progress=False)
    info = json.loads((tmp_path / "ft" / "privacy.json").read_text())
    assert info["steps"] == 4 and info["num_samples"] > 100 and info["epsilon"] > 0
    assert "epsilon" in read_metrics(tmp_path / "ft")[-1]


TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def _torchrun(out: Path, extra: list[str]) -> None:
    """`fastlm train tiny` with the micro config and `extra` on 2 processes (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "fastlm", "train", "tiny",
           "--out", str(out), "--quiet", *[a for item in [*MICRO, *extra] for a in ("--set", item)]]
    run = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


def test_two_data_parallel_processes_equal_one_with_noise(tmp_path):
    extra = ["privacy.noise_multiplier=1.0", "checkpoint.every=0", "train.eval_every=0"]
    _run(tmp_path / "single", *extra)
    _torchrun(tmp_path / "dp", extra)
    a, b = (safetensors.torch.load_file(tmp_path / r / "model.safetensors") for r in ("single", "dp"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-6, rtol=1e-5, msg=key)
    assert json.loads((tmp_path / "dp" / "privacy.json").read_text())["steps"] == 6


@pytest.mark.parametrize("extra", [
    ["parallel.tp=2"],
    ["parallel.tp=2", "parallel.sequence_parallel=true"],
    ["parallel.tp=2", "model.family=\"gpt2\"", "model.n_kv_head=4", "model.tie_embeddings=true"],
], ids=["tp2", "tp2-sequence-parallel", "tp2-gpt2-tied-vocab-parallel"])
def test_tensor_parallel_clipping_equals_one_process(tmp_path, extra):
    """tp=2 without noise (a shard's noise is its own draw): the per-sample norms summed over the tp
    ranks clip exactly as one process does, through the vocabulary-parallel embedding and head."""
    extra = ["privacy.noise_multiplier=0", "checkpoint.every=0", "train.eval_every=0", "train.steps=3", *extra]
    single = [e for e in extra if not e.startswith("parallel.")]
    _run(tmp_path / "single", *single)
    _torchrun(tmp_path / "tp", extra)
    a, b = (safetensors.torch.load_file(tmp_path / r / "model.safetensors") for r in ("single", "tp"))
    for key in a:  # fp32 sums in another order, through AdamW
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-4, msg=key)
    # the per-sample norms themselves (a shard's norm alone would be far smaller)
    norms = [[r["dp_sample_grad_norm"] for r in read_metrics(tmp_path / run) if "loss" in r] for run in ("single", "tp")]
    assert len(norms[0]) == 3 and norms[0] == pytest.approx(norms[1], rel=1e-4)
    assert max(r["dp_clipped_fraction"] for r in read_metrics(tmp_path / "single") if "loss" in r) > 0
