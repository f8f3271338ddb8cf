"""Secure aggregation inside federated rounds: the same model as aggregating in the clear (up to the fixed-point
rounding), dropped clients left out of the average exactly, rounds below the threshold discarded and logged
with the global model unchanged, and the protocol across 2 torchrun processes."""
from __future__ import annotations

import os
import subprocess

import pytest
import safetensors.torch
import torch

from fastlm.federated.aggregate import Aggregation, dropped_clients
from fastlm.federated.config import FederatedSection
from fastlm.train.metrics import read_metrics
from tests.federated.test_rounds import MICRO, TORCHRUN, _fit
from tests.parallel.dist_helpers import free_port


SGD = ["train.optimizer=\"sgd\"", "train.lr=0.3"]  # AdamW's first steps (~ lr * sign(g)) magnify 1e-9 differences


def _close(a, b, atol=1e-6):
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-5, msg=lambda m, key=key: f"{key}: {m}")


def test_secure_run_equals_plain_run(tmp_path):
    base = ["federated.clients=4", "federated.clients_per_round=3", "federated.rounds=3", "federated.local_steps=2", *SGD]
    plain = _fit(tmp_path / "plain", *base)
    secure = _fit(tmp_path / "secure", *base, "federated.secure_aggregation=true")
    _close(plain, secure)
    rounds = [r for r in read_metrics(tmp_path / "secure") if "loss" in r]
    assert all(r["survivors"] == 3 and r["dropped"] == 0 and not r["discarded"] for r in rounds)
    assert all(1.5 < r["bytes_sent"] / r["plain_bytes"] < 4 for r in rounds)  # int64 masked vectors + keys, shares


def test_dropped_clients_are_left_out_exactly():
    fed = FederatedSection(clients=6, secure_aggregation=True, threshold=3)
    gen = torch.Generator().manual_seed(1)
    contributions = {c: torch.cat([torch.randn(999, generator=gen, dtype=torch.float64) * 0.01,
                                   torch.tensor([1.0 + c], dtype=torch.float64)]) for c in range(6)}
    selected = list(range(6))
    agg = Aggregation(FederatedSection(**{**fed.__dict__, "dropout": 0.5}), seed=3, numel=1000)
    for r in range(20):  # find rounds where some (but not too many) clients drop
        dropped = dropped_clients(selected, 0.5, 3, r)
        result = agg.run(r, selected, contributions)
        assert result.dropped == sorted(dropped)
        if len(selected) - len(dropped) >= 3:
            expected = sum(contributions[c] for c in selected if c not in dropped)
            torch.testing.assert_close(result.total, expected, atol=6 * 2.0**-33, rtol=0)
        else:
            assert result.total is None and "threshold" in result.discarded


def test_rounds_below_the_threshold_are_discarded_and_logged(tmp_path):
    extra = ["federated.clients=4", "federated.rounds=6", "federated.secure_aggregation=true", "federated.dropout=0.5",
             "federated.threshold=4"]
    _fit(tmp_path / "run", *extra)
    lines = read_metrics(tmp_path / "run")
    rounds = [r for r in lines if "loss" in r]
    evals = {r["round"]: r["val_loss"] for r in lines if "val_loss" in r}
    discarded = [r["round"] for r in rounds if r["discarded"]]
    assert discarded and all(r["survivors"] < 4 for r in rounds if r["discarded"])
    for r in discarded:  # the global model did not move: the same validation loss as the round before
        assert evals[r] == evals[r - 1]


def test_torchrun_secure_aggregation_equals_one_process(tmp_path):
    extra = ["federated.clients=3", "federated.rounds=2", "federated.secure_aggregation=true", *SGD]
    single = _fit(tmp_path / "single", *[e for e in extra if "secure" not in e])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "fastlm", "train", "tiny",
           "--out", str(tmp_path / "dp"), "--quiet", *[a for item in [*MICRO, *extra] for a in ("--set", item)]]
    run = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    _close(single, safetensors.torch.load_file(tmp_path / "dp" / "model.safetensors"))
    rounds = [r for r in read_metrics(tmp_path / "dp") if "loss" in r]
    assert all(r["survivors"] == 3 and r["bytes_sent"] > r["plain_bytes"] for r in rounds)


def test_secure_needs_two_clients_a_round():
    from fastlm.train import load_config
    from fastlm.train.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 2 clients per round"):
        load_config("tiny", [*MICRO, "federated.clients=3", "federated.clients_per_round=1",
                             "federated.secure_aggregation=true"])
