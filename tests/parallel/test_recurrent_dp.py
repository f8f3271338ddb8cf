"""An LSTM run with 2 data-parallel gloo processes (torchrun) equals the single-process run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from fastlm.train import Trainer, load_config
from fastlm.train.metrics import read_metrics
from tests.parallel.dist_helpers import free_port

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
SETTINGS = ["model.n_layer=2", "model.d_model=32", "model.dropout=0.0", "data.vocab_size=320", "data.seq_len=32",
            "data.builtin_modules=[]", "train.steps=4", "train.global_batch_size=4", "train.micro_batch_size=1",
            "train.lr=3e-3", "train.warmup_steps=2", "train.log_every=1", "train.eval_every=0",
            "train.eval_batches=2", "train.precision=fp32", "checkpoint.every=2"]


def _losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir) if "loss" in r]


@pytest.mark.parametrize("family", ["lstm", "gru"])
def test_dp2_lstm_equals_one_process(tmp_path, family):
    settings = [*SETTINGS, f"model.family=\"{family}\""]
    single = tmp_path / "single"
    Trainer(load_config("lstm-tiny", settings), out_dir=single, show_progress=False).fit()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "fastlm", "train", "lstm-tiny",
           "--out", str(tmp_path / "dp2"), "--quiet", *[a for s in settings for a in ("--set", s)]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _losses(tmp_path / "dp2") == pytest.approx(_losses(single), rel=1e-5)
    wa = safetensors.torch.load_file(single / "model.safetensors")
    wb = safetensors.torch.load_file(tmp_path / "dp2" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-5, rtol=1e-4, msg=k)
