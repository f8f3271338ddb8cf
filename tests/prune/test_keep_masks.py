"""Pruned weights stay zero while a pruned run trains on (fastlm train / finetune with model.init_from)."""
from __future__ import annotations

import shutil

import pytest
import torch

from fastlm.cli import main
from fastlm.prune import read_pruning
from fastlm.tasks.demo import LANGID_LANGUAGES, locale_dir
from fastlm.train.weight_files import load_state_file
from tests.test_cli import MICRO_TOML

HAVE_CATALOGS = all(any((locale_dir() / lang / "LC_MESSAGES").glob("*.mo")) for lang in LANGID_LANGUAGES)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    root = tmp_path_factory.mktemp("keep")
    config = root / "micro.toml"
    config.write_text(MICRO_TOML)
    assert main(["train", str(config), "--out", str(root / "run"), "--quiet"]) == 0
    assert main(["prune", str(root / "run"), "--out", str(root / "pruned"), "--pattern", "2:4", "--no-eval"]) == 0
    return config, root / "pruned"


def weights(run_dir) -> dict:
    return load_state_file(run_dir / "model.safetensors")  # a 2:4 prune stores its linears compressed


def train_from(config, init, out):
    assert main(["train", str(config), "--out", str(out), "--quiet", "--set", f"model.init_from={init}",
                 "--set", "train.steps=5", "--set", "train.lr=1e-2", "--set", "train.weight_decay=0.1"]) == 0
    return weights(out)


def test_train_from_a_pruned_run_keeps_its_zeros(pruned, tmp_path):
    config, pruned_dir = pruned
    _, masks = read_pruning(pruned_dir)
    start = weights(pruned_dir)
    after = train_from(config, pruned_dir, tmp_path / "kept")
    for name, mask in masks.items():
        w = after[f"{name}.weight"]
        assert torch.count_nonzero(w[~mask]) == 0, name
        assert not torch.equal(w[mask], start[f"{name}.weight"][mask]), name  # the kept weights did train
    record, carried = read_pruning(tmp_path / "kept")  # the new run records the same pruning
    assert record["pattern"] == "2:4" and all(torch.equal(carried[n], masks[n]) for n in masks)


def test_without_the_masks_the_zeros_move(pruned, tmp_path):
    """The control: the same training from the same weights, masks removed, un-prunes weights."""
    config, pruned_dir = pruned
    _, masks = read_pruning(pruned_dir)
    bare = tmp_path / "bare"
    shutil.copytree(pruned_dir, bare)
    (bare / "prune.json").unlink()
    (bare / "prune_masks.safetensors").unlink()
    after = train_from(config, bare, tmp_path / "moved")
    assert sum(int(torch.count_nonzero(after[f"{n}.weight"][~m])) for n, m in masks.items()) > 0


@pytest.mark.skipif(not HAVE_CATALOGS, reason="no gettext catalogs for the langid demo")
def test_finetune_from_a_pruned_run_keeps_its_zeros(pruned, tmp_path):
    _, pruned_dir = pruned
    _, masks = read_pruning(pruned_dir)
    out = tmp_path / "cls"
    assert main(["finetune", "classification", "classification-demo", "--out", str(out), "--quiet",
                 "--set", f"model.init_from={pruned_dir}", "--set", "task.train=demo:langid:120",
                 "--set", "train.steps=4", "--set", "train.eval_every=0", "--set", "train.lr=1e-2",
                 "--set", "train.global_batch_size=8", "--set", "train.micro_batch_size=8",
                 "--set", "data.seq_len=32"]) == 0
    after = weights(out)
    for name, mask in masks.items():
        key = next(k for k in after if k.endswith(f"{name}.weight"))
        assert torch.count_nonzero(after[key][~mask]) == 0, key
