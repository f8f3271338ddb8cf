"""A ZeRO-1 run (parallel.shard_optimizer) resumed from a checkpoint equals the uninterrupted run: the
learning rate the schedule sets before the first resumed step is the one that step uses. (On the CPU
train.optimizer = "adamw" is fastlm.optim.AdamW, so this is also its ZeRO-1 test.)"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from fastlm.train.metrics import read_metrics
from tests.parallel.dist_helpers import free_port

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
MICRO = ["model.n_layer=2", "model.n_head=4", "model.n_kv_head=2", "model.d_model=32", "data.vocab_size=320",
         "data.seq_len=32", "data.builtin_modules=[]", "train.steps=4", "train.global_batch_size=4",
         "train.micro_batch_size=2", "train.lr=3e-3", "train.warmup_steps=1", "train.log_every=1",
         "train.eval_every=0", "train.eval_batches=2", "train.precision=fp32", "checkpoint.every=2",
         "checkpoint.keep=5", "parallel.shard_optimizer=true"]


def _torchrun(out: Path, resume: bool = False) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "fastlm", "train", "tiny",
           "--out", str(out), "--quiet", *(["--resume"] if resume else []),
           *[a for item in MICRO for a in ("--set", item)]]
    run = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


def test_sharded_optimizer_resume_is_exact(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _torchrun(straight)
    shutil.copytree(straight, resumed)  # a run killed after its step-2 checkpoint
    shutil.rmtree(resumed / "checkpoints" / "step_0000004")
    (resumed / "model.safetensors").unlink()
    _torchrun(resumed, resume=True)
    a, b = ([r["loss"] for r in read_metrics(run) if "loss" in r] for run in (straight, resumed))
    assert len(a) == 4 and a == pytest.approx(b, rel=1e-6)
    wa, wb = (safetensors.torch.load_file(run / "model.safetensors") for run in (straight, resumed))
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-6, atol=1e-7, msg=key)
