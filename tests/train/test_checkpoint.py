"""Checkpoints: bit-exact resume, keep-newest, and one-line errors for damaged or foreign ones."""
from __future__ import annotations

import json
import shutil

import pytest
import safetensors.torch
import torch

from fastlm.train import CheckpointError, Trainer
from fastlm.train.step import TrainStep
from fastlm.train.checkpoint import checkpoint_dirs
from fastlm.train.metrics import read_metrics
from tests.train.train_helpers import micro_config


def _tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_resume_is_bit_exact(finished_run, tmp_path, monkeypatch):
    """6 steps straight == 3 steps + resume + 3 steps: same losses, grad norms, val losses, weights.

    The micro config has dropout and 2 micro-batches per step, so RNG and data position matter.
    """
    straight, _ = finished_run
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    # Make the copy look like a run killed after its step-3 checkpoint.
    shutil.rmtree(resumed / "checkpoints" / "step_0000006")
    (resumed / "model.safetensors").unlink()
    steps_run = []
    real = TrainStep.__call__
    monkeypatch.setattr(TrainStep, "__call__", lambda self, *a: steps_run.append(1) or real(self, *a))

    Trainer(micro_config(), out_dir=resumed, resume=True, show_progress=False).fit()

    assert len(steps_run) == 3                                    # only steps 4..6 were trained again
    a, b = read_metrics(straight), read_metrics(resumed)
    assert [r["step"] for r in a] == [r["step"] for r in b]       # lines after step 3 replaced, not duplicated
    for ra, rb in zip(a, b):
        for key in ("loss", "grad_norm", "lr", "val_loss"):
            assert ra.get(key) == rb.get(key), (ra["step"], key)
    wa = safetensors.torch.load_file(straight / "model.safetensors")
    wb = safetensors.torch.load_file(resumed / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    oa = torch.load(straight / "checkpoints/step_0000006/optimizer.pt", weights_only=True)
    ob = torch.load(resumed / "checkpoints/step_0000006/optimizer.pt", weights_only=True)
    assert all(torch.equal(oa["state"][i]["exp_avg_sq"], ob["state"][i]["exp_avg_sq"]) for i in oa["state"])


def test_keep_newest_and_no_temporary_directories(tmp_path):
    out = tmp_path / "keep"
    Trainer(micro_config("train.steps=5", "checkpoint.every=1", "checkpoint.keep=2"), out_dir=out,
            show_progress=False).fit()
    assert [p.name for p in checkpoint_dirs(out)] == ["step_0000004", "step_0000005"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000004", "step_0000005"]
    state = json.loads((out / "checkpoints/step_0000005/trainer_state.json").read_text())
    assert state["step"] == 5 and state["model"]["n_layer"] == 2
    assert state["files"]["model.safetensors"]["bytes"] == (out / "checkpoints/step_0000005/model.safetensors").stat().st_size


@pytest.fixture
def damaged_copy(finished_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(finished_run[0], run)
    return run


@pytest.mark.parametrize("damage, message", [
    (lambda c: c.joinpath("optimizer.pt").write_bytes(c.joinpath("optimizer.pt").read_bytes()[:100]),
     r"step_0000006 is truncated: optimizer.pt has 100 bytes, expected \d+"),
    (lambda c: c.joinpath("state.pt").unlink(), r"state.pt is missing"),
    (lambda c: c.joinpath("trainer_state.json").write_text("{"), r"unreadable trainer_state.json"),
    (lambda c: c.joinpath("model.safetensors").write_bytes(
        bytes(reversed(c.joinpath("model.safetensors").read_bytes()))), r"model.safetensors does not match its sha256"),
])
def test_damaged_checkpoint_is_a_one_line_error_and_changes_nothing(damaged_copy, damage, message):
    damage(damaged_copy / "checkpoints" / "step_0000006")
    before = _tree(damaged_copy)
    with pytest.raises(CheckpointError, match=message) as info:
        Trainer(micro_config(), out_dir=damaged_copy, resume=True, show_progress=False).fit()
    assert "\n" not in str(info.value) and "delete it to resume from an earlier checkpoint" in str(info.value)
    assert _tree(damaged_copy) == before


def test_checkpoint_of_another_model_is_an_error(damaged_copy):
    before = _tree(damaged_copy)
    with pytest.raises(CheckpointError, match=r"does not match this run: model.n_layer is 2 there, 4 here"):
        Trainer(micro_config("model.n_layer=4"), out_dir=damaged_copy, resume=True, show_progress=False).fit()
    assert _tree(damaged_copy) == before


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Trainer(micro_config(), out_dir=tmp_path / "nothing", resume=True, show_progress=False).fit()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        Trainer(micro_config(), out_dir=tmp_path / "empty", resume=True, show_progress=False).fit()
    assert list((tmp_path / "empty").iterdir()) == []


def test_resume_after_a_torn_metrics_line(finished_run, tmp_path):
    run = tmp_path / "torn"
    shutil.copytree(finished_run[0], run)
    shutil.rmtree(run / "checkpoints" / "step_0000006")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 7, "lo')                                # killed mid-write
    Trainer(micro_config(), out_dir=run, resume=True, show_progress=False).fit()
    keys = ("step", "loss", "val_loss")
    assert [[r.get(k) for k in keys] for r in read_metrics(run)] == \
        [[r.get(k) for k in keys] for r in read_metrics(finished_run[0])]
