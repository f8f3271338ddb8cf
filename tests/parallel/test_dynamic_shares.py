"""parallel.dp_shares = "dynamic": shares solved from measured speeds, the same training whatever the shares."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from fastlm.data.loader import BatchLoader, equal_shares
from fastlm.parallel.dynamic_shares import DynamicShares, slowdown_per_sample, solve_shares
from fastlm.train import Trainer
from fastlm.train.config import ConfigError
from fastlm.train.metrics import read_metrics
from tests.parallel.dist_helpers import free_port
from tests.train.train_helpers import MICRO, micro_config

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def _losses(run_dir):
    return [row["loss"] for row in read_metrics(run_dir) if "loss" in row]


def test_equal_shares_split_every_sample():
    assert equal_shares(7, 3) == [3, 2, 2] and equal_shares(8, 2) == [4, 4] and equal_shares(2, 2) == [1, 1]


@pytest.mark.parametrize("per_sample", [[1.0, 3.0], [1.0, 1.0, 2.0, 4.0], [0.2, 5.0, 1.0]])
def test_shares_converge_to_the_speed_ratio(per_sample):
    """Simulated ranks whose time is samples x their cost: shares end proportional to 1 / cost."""
    total, ranks = 240, len(per_sample)
    shares = equal_shares(total, ranks)
    for _ in range(30):
        new = solve_shares(shares, [n * c for n, c in zip(shares, per_sample)], shares, max_change=0.25)
        assert sum(new) == total and min(new) >= 1 and all(isinstance(n, int) for n in new)
        assert max(abs(a - b) for a, b in zip(new, shares)) <= 0.25 * total + 1  # bounded change
        shares = new
    speeds = [1 / c for c in per_sample]
    ideal = [total * v / sum(speeds) for v in speeds]
    assert all(abs(s - i) <= 1 for s, i in zip(shares, ideal)), (shares, ideal)


def test_every_rank_keeps_one_sample_and_missing_measurements_keep_the_shares():
    assert solve_shares([5, 5], [1.0, 1e6], [5, 5], max_change=1.0) == [9, 1]
    assert solve_shares([6, 4], [0.0, 1.0], [6, 4]) == [6, 4]  # a rank measured nothing
    assert solve_shares([3, 3], [1.0, 1.0], [3, 3]) == [3, 3]


def test_loader_shares_cut_the_same_global_batch():
    tokens = np.arange(5000, dtype=np.int64)
    kwargs = dict(seq_len=8, global_batch_size=7, micro_batch_size=2, seed=1, world_size=2, prefetch=0)
    whole = BatchLoader(tokens, **{**kwargs, "world_size": 1, "micro_batch_size": 7}).batch_for_step(3)[0]
    for shares in ([1, 6], [4, 3], [6, 1]):
        parts = []
        for rank in range(2):
            loader = BatchLoader(tokens, rank=rank, dynamic_shares=True, **kwargs)
            loader.set_shares(shares)
            micro = loader.batch_for_step(3)
            assert [len(m) for m in micro] == [2] * (shares[rank] // 2) + [1] * (shares[rank] % 2)
            parts.extend(micro)
        assert torch.equal(torch.cat(parts), whole)
    loader = BatchLoader(tokens, rank=0, dynamic_shares=True, **kwargs)
    loader.set_shares([5, 2])
    state = loader.state_dict()
    assert state["shares"] == [5, 2]
    fresh = BatchLoader(tokens, rank=0, dynamic_shares=True, **kwargs)
    fresh.load_state_dict(state)
    assert fresh.shares == [5, 2] and torch.equal(torch.cat(fresh.batch_for_step(0)), torch.cat(loader.batch_for_step(0)))
    for bad in ([7, 0], [3, 3], [1, 2, 4]):
        with pytest.raises(ValueError, match="positive sample counts summing to global_batch_size 7"):
            loader.set_shares(bad)


def test_rebalance_moves_the_loader_and_the_weights():
    class FakeDP:
        shares = None

        def set_shares(self, shares):
            self.shares = list(shares)

    loader = BatchLoader(np.arange(4000), seq_len=8, global_batch_size=12, micro_batch_size=3, seed=0,
                         world_size=1, prefetch=0)
    dp = FakeDP()
    balance = DynamicShares(loader, dp, every=1)
    assert loader.shares == [12] and dp.shares == [12]
    balance.record(1.0, 12)
    assert balance.rebalance() == [12]  # one rank: nothing to move


def test_slow_rank_spec(monkeypatch):
    monkeypatch.setenv("FASTLM_TEST_SLOW_RANK", "1:0.25")
    assert slowdown_per_sample(1) == 0.25 and slowdown_per_sample(0) == 0.0
    monkeypatch.setenv("FASTLM_TEST_SLOW_RANK", "one")
    with pytest.raises(ValueError, match="RANK:SECONDS_PER_SAMPLE"):
        slowdown_per_sample(0)


@pytest.mark.parametrize("extra, message", [
    (["parallel.dp_shares=\"fast\""], 'parallel.dp_shares = "fast": expected a list of positive integers'),
    (["parallel.dp_shares=\"dynamic\"", "parallel.rebalance_every=0"], "parallel.rebalance_every = 0"),
    (["parallel.dp_shares=\"dynamic\"", "parallel.sync=\"local_sgd\"", "parallel.sync_every=2"],
     "not available with parallel.sync"),
])
def test_config_errors(extra, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        micro_config(*extra)


def test_one_process_with_ragged_micro_batches_equals_one_micro_batch(tmp_path):
    """dynamic shares with one rank: 7 sequences as micro-batches 2 + 2 + 2 + 1 equal one micro-batch of 7."""
    common = ["model.dropout=0.0", "train.steps=3", "train.global_batch_size=7", "checkpoint.every=0",
              "train.eval_every=0"]
    ragged = Trainer(micro_config(*common, "train.micro_batch_size=2", "parallel.dp_shares=\"dynamic\""),
                     out_dir=tmp_path / "a", show_progress=False).fit()
    whole = Trainer(micro_config(*common, "train.micro_batch_size=7"), out_dir=tmp_path / "b",
                    show_progress=False).fit()
    # (validation batches are micro_batch_size rows each: the validation losses differ, the training does not)
    assert _losses(ragged["run_dir"]) == pytest.approx(_losses(whole["run_dir"]), rel=1e-5)
    _assert_same_weights(tmp_path / "a", tmp_path / "b")


def test_torchrun_slow_rank_gets_fewer_samples_and_training_equals_one_process(tmp_path):
    # SGD with momentum: AdamW's first steps magnify last-bit differences of summing in another order
    common = ["model.dropout=0.0", "train.steps=8", "train.global_batch_size=9", "train.eval_every=0",
              "checkpoint.every=4", "train.optimizer=\"sgd\"", "train.momentum=0.9", "train.lr=0.3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FASTLM_TEST_SLOW_RANK": "1:0.03"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    sets = [a for item in [*MICRO, *common, "train.micro_batch_size=2", "parallel.dp_shares=\"dynamic\"",
                           "parallel.rebalance_every=2"] for a in ("--set", item)]
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "fastlm", "train", "tiny",
           "--out", str(tmp_path / "run"), "--quiet", *sets]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    logged = [row["dp_shares"] for row in read_metrics(tmp_path / "run") if "dp_shares" in row]
    assert logged[0] == [5, 4] and all(sum(s) == 9 for s in logged)
    assert logged[-1][0] > logged[-1][1] + 2, logged  # rank 1 sleeps 30 ms per sample: it gets fewer
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_0000004" / "state.pt", weights_only=True)
    assert state["loader"]["shares"] == logged[3]  # the shares are part of the checkpoint
    ref = Trainer(micro_config(*common, "train.micro_batch_size=9"), out_dir=tmp_path / "ref",
                  show_progress=False).fit()
    assert _losses(tmp_path / "run") == pytest.approx(_losses(ref["run_dir"]), rel=1e-5)
    _assert_same_weights(tmp_path / "run", ref["run_dir"])
    # Resumed from step 4 (its checkpoint holds the shares reached): the same shares go on, the same training.
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_0000008")
    r = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = [row["dp_shares"] for row in read_metrics(tmp_path / "run") if "dp_shares" in row]
    assert len(resumed) == 8 and resumed[4] == logged[3]
    _assert_same_weights(tmp_path / "run", ref["run_dir"])


def _assert_same_weights(a, b):
    wa = safetensors.torch.load_file(Path(a) / "model.safetensors")
    wb = safetensors.torch.load_file(Path(b) / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4, msg=k)
