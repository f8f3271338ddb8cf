"""The image tasks with the trainer's machinery: 2 data-parallel gloo processes equal one (captioning; the
retrieval task's gathered loss is tested in test_retrieval.py), an interrupted run resumed from its checkpoint
ends with the weights of an uninterrupted one, and `fastlm plot` draws the run's losses."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from fastlm.tasks import get_task
from fastlm.tasks.config import task_config_from_dict
from fastlm.tasks.loop import finetune
from tests.tasks.task_helpers import tiny_config
from tests.tasks.test_captioning import _dataset


def _raw(task: str, train: str, **train_keys) -> dict:
    family = "bert" if task == "image_text_retrieval" else "llama"
    raw = tiny_config(train, family=family, **train_keys)
    raw["task"].update(image_size=16, patch_size=4, vision_layers=1)
    if task == "captioning":
        raw["task"].update(max_new_tokens=4)
        raw["model"]["max_seq_len"] = 64
    else:
        raw["task"]["embed_dim"] = 16
        raw["model"]["d_ff"] = 64
    return raw


def _run(rank, world, task, raw, out, resume=False):
    torch.set_num_threads(1)
    t = get_task(task)
    result = finetune(t, task_config_from_dict(raw, t.Section), out, show_progress=False, resume=resume)
    return {k: v.detach().clone() for k, v in result["model"].state_dict().items()}


def test_captioning_on_two_processes_matches_one(tmp_path):
    from tests.parallel.dist_helpers import run_world

    raw = _raw("captioning", _dataset(tmp_path, 48), steps=3, global_batch_size=16, micro_batch_size=8,
               grad_clip=0.0)
    single = _run(0, 1, "captioning", raw, tmp_path / "one")
    ranks = run_world(_run, 2, "captioning", raw, str(tmp_path / "two"), timeout=300)
    for name, want in single.items():
        torch.testing.assert_close(ranks[0][name], want, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        torch.testing.assert_close(ranks[1][name], ranks[0][name], rtol=0, atol=0, msg=lambda m, n=name: f"{n}: {m}")
    assert (tmp_path / "two" / "model.safetensors").is_file()


@pytest.mark.parametrize("task", ["captioning", "image_text_retrieval"])
def test_resume_matches_an_uninterrupted_run_and_the_losses_plot(tmp_path, task):
    import safetensors.torch

    from fastlm.train.plot import plot_run

    raw = _raw(task, _dataset(tmp_path, 40), steps=6, global_batch_size=8, micro_batch_size=8)
    raw["checkpoint"] = {"every": 3, "keep": 2}
    _run(0, 1, task, raw, tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # as if stopped after the checkpoint of step 3
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step_0000006")
    (tmp_path / "b" / "model.safetensors").unlink()
    _run(0, 1, task, raw, tmp_path / "b", resume=True)
    a = safetensors.torch.load_file(tmp_path / "a" / "model.safetensors")
    b = safetensors.torch.load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3, 4, 5, 6]
    png = plot_run(tmp_path / "b")
    assert png == tmp_path / "b" / "loss.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
