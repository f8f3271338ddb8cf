"""Pruned weights stay zero under 2 data-parallel processes (ZeRO-1 sharded optimizer too), and the
run equals the single-process one; tensor parallelism refuses a pruned init_from in one line."""
from __future__ import annotations

import pytest
import torch

from fastlm.cli import main
from fastlm.prune import read_pruning
from fastlm.train import Trainer
from tests.parallel.test_trainer_dp import COMMON, _assert_same_run, _torchrun, _weights
from tests.train.train_helpers import micro_config


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    root = tmp_path_factory.mktemp("keep-dp")
    Trainer(micro_config(*COMMON), out_dir=root / "run", show_progress=False).fit()
    assert main(["prune", str(root / "run"), "--out", str(root / "pruned"), "--sparsity", "0.6", "--no-eval"]) == 0
    return root / "pruned"


@pytest.mark.parametrize("extra", [[], ["parallel.shard_optimizer=true", "parallel.bucket_mb=0.01"]],
                         ids=["dp", "zero1"])
def test_data_parallel_keeps_the_zeros(pruned, tmp_path, extra):
    init = [f"model.init_from={pruned}", "train.lr=1e-2"]
    single = tmp_path / "single"
    Trainer(micro_config(*COMMON, *init), out_dir=single, show_progress=False).fit()
    p = _torchrun(tmp_path / "dp", [*init, *extra])
    assert p.returncode == 0, p.stderr
    _assert_same_run(single, tmp_path / "dp")
    _, masks = read_pruning(pruned)
    after = _weights(tmp_path / "dp")
    for name, mask in masks.items():
        assert torch.count_nonzero(after[f"{name}.weight"][~mask]) == 0, name


def test_tensor_parallel_refuses_a_pruned_init_from(pruned, tmp_path):
    p = _torchrun(tmp_path / "tp", [f"model.init_from={pruned}", "parallel.tp=2"])
    assert p.returncode == 1, p.stderr
    assert "keeping its pruning masks is not available with parallel.tp > 1" in p.stderr, p.stderr
