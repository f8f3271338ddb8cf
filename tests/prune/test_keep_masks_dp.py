"""Pruned weights stay zero under 2 data-parallel processes (ZeRO-1 sharded optimizer too) and under
tensor parallelism (each mask split like its weight), and the run equals the single-process one."""
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
    # micro batch 1: init_from's config.toml is validated against the launch's world size (4 for
    # dp2 x tp2, read as its dp) -- a known limitation of load_config under torchrun
    Trainer(micro_config(*COMMON, "train.micro_batch_size=1"), out_dir=root / "run", show_progress=False).fit()
    assert main(["prune", str(root / "run"), "--out", str(root / "pruned"), "--sparsity", "0.6", "--no-eval"]) == 0
    assert main(["prune", str(root / "run"), "--out", str(root / "pruned24"), "--pattern", "2:4", "--no-eval"]) == 0
    return root / "pruned"


def assert_kept(pruned_dir, run_dir):
    _, masks = read_pruning(pruned_dir)
    after = _weights(run_dir)
    for name, mask in masks.items():
        assert torch.count_nonzero(after[f"{name}.weight"][~mask]) == 0, name


@pytest.mark.parametrize("extra", [[], ["parallel.shard_optimizer=true", "parallel.bucket_mb=0.01"]],
                         ids=["dp", "zero1"])
def test_data_parallel_keeps_the_zeros(pruned, tmp_path, extra):
    init = [f"model.init_from={pruned}", "train.lr=1e-2"]
    single = tmp_path / "single"
    Trainer(micro_config(*COMMON, *init), out_dir=single, show_progress=False).fit()
    p = _torchrun(tmp_path / "dp", [*init, *extra])
    assert p.returncode == 0, p.stderr
    _assert_same_run(single, tmp_path / "dp")
    assert_kept(pruned, tmp_path / "dp")


@pytest.mark.parametrize("which,extra,nproc", [
    ("pruned", ["parallel.tp=2"], 2),
    ("pruned24", ["parallel.tp=2", "parallel.sequence_parallel=true"], 2),
    ("pruned", ["parallel.tp=2", "parallel.dp=2"], 4),
], ids=["tp2", "tp2-sp-2:4", "dp2xtp2"])
def test_tensor_parallel_keeps_the_zeros(pruned, tmp_path, which, extra, nproc):
    """Each rank re-applies its shard of every mask: the tp run equals one process, zeros stay zero."""
    source = pruned.parent / which
    init = [f"model.init_from={source}", "train.lr=1e-2"]
    single = tmp_path / "single"
    Trainer(micro_config(*COMMON, *init), out_dir=single, show_progress=False).fit()
    p = _torchrun(tmp_path / "tp", [*init, *extra], nproc=nproc)
    assert p.returncode == 0, p.stderr[-3000:]
    _assert_same_run(single, tmp_path / "tp", atol=1e-4)  # fp32 sums in another order, through AdamW
    assert_kept(source, tmp_path / "tp")
