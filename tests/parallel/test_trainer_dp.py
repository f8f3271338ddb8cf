"""`torchrun ... -m fastlm train` with 2 data-parallel processes equals the single-process run."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from fastlm.train import Trainer
from fastlm.train.metrics import read_metrics
from fastlm.train.run import load_run
from tests.parallel.dist_helpers import free_port
from tests.train.train_helpers import MICRO, micro_config

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
COMMON = ["model.dropout=0.0", "train.steps=4", "checkpoint.every=2", "train.eval_every=0"]


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


def _torchrun(out, extra, nproc=2, timeout=300, launcher_args=None, resume=False):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    args = launcher_args or ["--nproc-per-node", str(nproc), "--master-port", str(free_port())]
    cmd = [TORCHRUN, *args, "-m", "fastlm", "train", "tiny", "--out", str(out), "--quiet",
           *(["--resume"] if resume else []), *_sets([*MICRO, *COMMON, *extra])]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir) if "loss" in r]


def _weights(run_dir):
    return safetensors.torch.load_file(Path(run_dir) / "model.safetensors")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    Trainer(micro_config(*COMMON), out_dir=out, show_progress=False).fit()
    return out


def _assert_same_run(a, b, atol=1e-5):
    assert _losses(a) == pytest.approx(_losses(b), rel=1e-5)
    wa, wb = _weights(a), _weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=1e-4, msg=k)


@pytest.mark.parametrize("extra", [[], ["parallel.shard_optimizer=true", "parallel.bucket_mb=0.01"],
                                   ["parallel.dp_shares=[3, 1]", "train.micro_batch_size=1"]],
                         ids=["plain", "zero1", "shares"])
def test_torchrun_dp2_equals_one_process(tmp_path, single, extra):
    r = _torchrun(tmp_path / "run", extra)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(tmp_path / "run", single)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_0000002", "step_0000004"]
    # The finished run loads in one process (eval / generate), whatever its parallel settings.
    config, model, _ = load_run(tmp_path / "run")
    assert config.parallel.dp_shares == (None if "shares" not in str(extra) else [3, 1])


def test_zero1_resume_with_another_dp_size(tmp_path):
    """A sharded checkpoint of dp=2 (step 2 of 4) resumed by dp=3 equals one process all along."""
    out, sizes = tmp_path / "run", ["parallel.shard_optimizer=true", "train.global_batch_size=6",
                                    "train.micro_batch_size=1"]
    r = _torchrun(out, sizes, nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.rmtree(out / "checkpoints" / "step_0000004")
    r = _torchrun(out, sizes, nproc=3, resume=True)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = tmp_path / "ref"
    Trainer(micro_config(*COMMON, *sizes[1:]), out_dir=ref, show_progress=False).fit()
    _assert_same_run(out, ref)


def test_two_launchers_as_two_nodes(tmp_path, single):
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for node in (0, 1):
        args = ["--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1", "--master-addr", "127.0.0.1",
                "--master-port", port]
        cmd = [TORCHRUN, *args, "-m", "fastlm", "train", "tiny", "--out", str(tmp_path / "run"), "--quiet",
               *_sets([*MICRO, *COMMON])]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    _assert_same_run(tmp_path / "run", single)


def test_dp_config_errors(tmp_path):
    r = _torchrun(tmp_path / "run", ["parallel.dp=4", "train.micro_batch_size=1"])
    assert r.returncode != 0 and "dp * tp * pp = 4 * 1 * 1 = 4, but there are 2 processes" in r.stderr
    r = _torchrun(tmp_path / "run", ["parallel.dp_shares=[1, 1, 1]"])
    assert r.returncode != 0 and "parallel.dp_shares = [1, 1, 1]: expected 2 shares" in r.stderr
    assert r.stderr.count("fastlm: error:") == 1  # said once (rank 0), not once per rank
    assert not (tmp_path / "run").exists()
