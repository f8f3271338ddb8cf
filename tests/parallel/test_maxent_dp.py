"""A maxent run with 2 data-parallel processes (torchrun, gloo) equals the single-process run."""
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
MICRO = ["model.hash_buckets=65536", "data.vocab_size=320", "data.seq_len=32", "data.builtin_modules=[]",
         "train.steps=4", "train.global_batch_size=4", "train.micro_batch_size=2", "train.warmup_steps=1",
         "train.eval_every=0", "train.eval_batches=2", "train.log_every=1"]


def test_two_data_parallel_processes_equal_one(tmp_path):
    single = tmp_path / "single"
    Trainer(load_config("maxent", MICRO), out_dir=single, show_progress=False).fit()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    dp = tmp_path / "dp"
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "fastlm", "train", "maxent",
           "--out", str(dp), "--quiet", *[a for item in MICRO for a in ("--set", item)]]
    out = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    losses = [[r["loss"] for r in read_metrics(run) if "loss" in r] for run in (single, dp)]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-5)
    a, b = (safetensors.torch.load_file(run / "model.safetensors") for run in (single, dp))
    assert a["theta"].abs().sum() > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=key)
