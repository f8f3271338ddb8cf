"""The image-text retrieval task: recall@k against a brute-force count, the random baseline, and learning."""
from __future__ import annotations

import pytest
import torch

from fastlm.tasks import evaluate, get_task
from fastlm.tasks.config import task_config_from_dict
from fastlm.tasks.loop import finetune
from fastlm.tasks.retrieval import random_recall, recall_at
from tests.tasks.test_captioning import _dataset
from tests.tasks.task_helpers import tiny_config


def test_recall_counts_items_with_the_same_caption():
    captions = ["a", "b", "a", "c"]
    sim = torch.tensor([[0.0, 1.0, 0.5, 0.2],   # image 0: best b (miss), then a (hit at 2)
                        [0.0, 0.1, 0.9, 1.0],   # image 1: c, a, b -> hit at 3
                        [1.0, 0.0, 0.0, 0.0],   # image 2: text 0 ("a") -> hit at 1
                        [0.0, 0.0, 0.0, 1.0]])  # image 3: text 3 -> hit at 1
    r = recall_at(sim, captions, ks=(1, 2))
    assert r["image_to_text_recall@1"] == pytest.approx(2 / 4)
    assert r["image_to_text_recall@2"] == pytest.approx(3 / 4)
    # random: each query of "a" has 2 matches among 4, "b" and "c" 1
    assert random_recall(captions, 1) == pytest.approx((2 / 4 + 1 / 4 + 2 / 4 + 1 / 4) / 4)
    assert random_recall(captions, 4) == 1.0


def test_retrieval_learns_beyond_random(tmp_path):
    train = _dataset(tmp_path, 300)
    rows = open(train).read().splitlines()
    (tmp_path / "set" / "val.jsonl").write_text("\n".join(rows[:60]) + "\n")
    open(train, "w").write("\n".join(rows[60:]) + "\n")
    raw = tiny_config(train, family="bert", steps=150, lr=2e-3, global_batch_size=32, micro_batch_size=32)
    raw["task"].update(image_size=16, patch_size=4, vision_layers=1, embed_dim=32,
                       validation=str(tmp_path / "set" / "val.jsonl"))
    raw["model"].update(d_model=64, d_ff=128)
    tc = task_config_from_dict(raw, get_task("image_text_retrieval").Section, name="retr")
    m = finetune(get_task("image_text_retrieval"), tc, tmp_path / "run", show_progress=False)["metrics"]
    assert m["image_to_text_recall@5"] > m["random_recall@5"] + 0.15
    assert m["text_to_image_recall@5"] > m["random_recall@5"] + 0.15
    again = evaluate("image_text_retrieval", tmp_path / "run")["metrics"]
    assert again["image_to_text_recall@1"] == pytest.approx(m["image_to_text_recall@1"])


def _retrieval_raw(train, micro):
    # SGD: the key bias's gradient is zero up to rounding, which AdamW would turn into lr-sized steps
    raw = tiny_config(train, family="bert", steps=3, global_batch_size=16, micro_batch_size=micro, grad_clip=0.0,
                      optimizer="sgd", lr=0.1)
    raw["task"].update(image_size=16, patch_size=4, vision_layers=1, embed_dim=16)
    raw["model"].update(d_ff=64)
    return raw


def _retrieval_run(rank, world, raw, out):
    torch.set_num_threads(1)
    task = get_task("image_text_retrieval")
    result = finetune(task, task_config_from_dict(raw, task.Section), out, show_progress=False)
    return {k: v.detach().clone() for k, v in result["model"].state_dict().items()}


def test_two_processes_contrast_the_global_batch(tmp_path):
    """2 data-parallel processes of 8 pairs each train like one process contrasting all 16 pairs at once."""
    from tests.parallel.dist_helpers import run_world

    train = _dataset(tmp_path, 48)
    single = _retrieval_run(0, 1, _retrieval_raw(train, 16), tmp_path / "one")
    ranks = run_world(_retrieval_run, 2, _retrieval_raw(train, 8), str(tmp_path / "two"), timeout=240)
    for name, want in single.items():
        torch.testing.assert_close(ranks[0][name], want, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")
