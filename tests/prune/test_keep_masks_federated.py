"""Federated rounds from a pruned run keep its pruned weights at zero: the clients' local steps
(TrainStep's after_step) and the server's noisy global update (federated.client_dp) both re-mask."""
from __future__ import annotations

import shutil

import pytest
import torch

from fastlm.cli import main
from fastlm.prune import read_pruning
from fastlm.train import Trainer
from fastlm.train.weight_files import load_state_file
from tests.federated.test_rounds import _config

FEDERATED = ["federated.clients=2", "federated.rounds=2", "federated.local_steps=2",
             "federated.client_dp={clip = 0.1, noise_multiplier = 1.0}", "train.lr=1e-2"]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    root = tmp_path_factory.mktemp("keep-fed")
    Trainer(_config("train.steps=4"), out_dir=root / "run", show_progress=False).fit()
    assert main(["prune", str(root / "run"), "--out", str(root / "pruned"), "--pattern", "2:4", "--no-eval"]) == 0
    return root / "pruned"


def pruned_weights_moved(init, out, masks) -> int:
    Trainer(_config(f"model.init_from={init}", *FEDERATED), out_dir=out, show_progress=False).fit()
    after = load_state_file(out / "model.safetensors")
    return sum(int(torch.count_nonzero(after[f"{n}.weight"][~m])) for n, m in masks.items())


def test_federated_rounds_keep_the_zeros(pruned, tmp_path):
    assert pruned_weights_moved(pruned, tmp_path / "fed", read_pruning(pruned)[1]) == 0
    record, _ = read_pruning(tmp_path / "fed")  # the new run records the pruning it kept
    assert record["pattern"] == "2:4"


def test_without_the_masks_they_move(pruned, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(pruned, bare)
    (bare / "prune.json").unlink()
    (bare / "prune_masks.safetensors").unlink()
    assert pruned_weights_moved(bare, tmp_path / "fed", read_pruning(pruned)[1]) > 0
