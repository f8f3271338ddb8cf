"""parallel.sync = "async": background parameter averaging, applied on arrival or at max_staleness; 0 = local SGD."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from fastlm.train.config import ConfigError
from fastlm.train.metrics import read_metrics
from tests.parallel.dist_helpers import free_port, run_world
from tests.train.train_helpers import MICRO, micro_config

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def _averager_semantics(rank, world, max_staleness):
    """Rank r's parameter is snapshot, averaged in the background and moved on locally meanwhile."""
    from fastlm.parallel import DataParallel, init_mesh
    from fastlm.parallel.async_averaging import AsyncAverager

    mesh = init_mesh()
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    dp = DataParallel(model, mesh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(rank + 1.0)  # the ranks now disagree
    model(torch.randn(4, 5)).sum().backward()
    opt.step()  # momentum buffers exist (averaged too)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    averager = AsyncAverager(dp, opt, max_staleness)
    started = time.perf_counter()
    averager.launch()
    still_in_flight = len(averager.in_flight)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(10.0 * (rank + 1))  # local progress while the average travels
    for _ in range(max_staleness):
        averager.step_done()
    waited = time.perf_counter() - started
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, (before, momentum))
    return {"in_flight_after_launch": still_in_flight, "left": len(averager.in_flight), "waited": waited,
            "params": {n: p.detach().clone() for n, p in model.named_parameters()},
            "momentum": [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()],
            "gathered": gathered}


@pytest.mark.parametrize("max_staleness", [0, 2])
def test_average_of_the_snapshot_plus_local_progress(max_staleness):
    results = run_world(_averager_semantics, 2, max_staleness, timeout=120, env={"FASTLM_TEST_COMM_DELAY": "0.4"})
    for rank, r in enumerate(results):
        assert r["left"] == 0 and r["waited"] >= 0.4  # applied at max_staleness steps at the latest, waited for
        assert r["in_flight_after_launch"] == (0 if max_staleness == 0 else 1)  # 0: waited at once
        progress = 10.0 * (rank + 1)  # added after the launch: kept on top of the average either way
        for name, value in r["params"].items():
            mean = sum(g[0][name] for g in r["gathered"]) / 2
            torch.testing.assert_close(value, mean + progress, rtol=0, atol=1e-6)
        for i, buf in enumerate(r["momentum"]):
            torch.testing.assert_close(buf, sum(g[1][i] for g in r["gathered"]) / 2, rtol=0, atol=1e-7)


def _torchrun(out, extra, env_extra=None, resume=False):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    sets = [a for item in [*MICRO, "model.dropout=0.0", "train.steps=6", "train.eval_every=0", "checkpoint.every=0",
                           *extra] for a in ("--set", item)]
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "fastlm", "train", "tiny",
           "--out", str(out), "--quiet", *(["--resume"] if resume else []), *sets]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_max_staleness_zero_is_local_sgd(tmp_path):
    runs = {}
    for name, extra in {"local": ["parallel.sync=\"local_sgd\"", "parallel.sync_every=2"],
                        "async": ["parallel.sync=\"async\"", "parallel.sync_every=2", "parallel.max_staleness=0"]}.items():
        r = _torchrun(tmp_path / name, extra)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = safetensors.torch.load_file(tmp_path / name / "model.safetensors")
    plain = _torchrun(tmp_path / "plain", [])
    assert plain.returncode == 0, plain.stderr[-3000:]
    plain_weights = safetensors.torch.load_file(tmp_path / "plain" / "model.safetensors")
    for k in runs["local"]:
        assert torch.equal(runs["local"][k], runs["async"][k]), k
    assert any(not torch.equal(runs["local"][k], plain_weights[k]) for k in plain_weights)  # local SGD is not sync


def test_async_run_with_staleness_trains_and_resumes(tmp_path):
    """Averages arrive late (a 50 ms injected delay, up to 2 steps stale); the run trains, checkpoints and resumes."""
    extra = ["parallel.sync=\"async\"", "parallel.sync_every=2", "parallel.max_staleness=2", "checkpoint.every=3",
             "train.steps=9"]
    delay = {"FASTLM_TEST_COMM_DELAY": "0.05"}
    r = _torchrun(tmp_path / "run", extra, delay)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [row["loss"] for row in read_metrics(tmp_path / "run") if "loss" in row]
    assert len(losses) == 9 and losses[-1] < losses[0]
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_0000009")
    r = _torchrun(tmp_path / "run", extra, delay, resume=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [row["step"] for row in read_metrics(tmp_path / "run") if "loss" in row] == list(range(1, 10))


@pytest.mark.parametrize("extra, message", [
    (["parallel.sync=\"async\"", "parallel.max_staleness=-1"], "parallel.max_staleness = -1"),
    (["parallel.sync=\"async\"", "parallel.sync_every=2", "parallel.shard_optimizer=true"],
     'shard_optimizer = true: not available with parallel.sync = "async"'),
    (["parallel.sync=\"async\"", "parallel.sync_every=2", "parallel.tp=2"], 'not available with parallel.sync = "async"'),
])
def test_config_errors(extra, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        micro_config(*extra)
