"""The captioning task: the caption-only loss, training on the synthetic shapes, VQA prompts, data errors."""
from __future__ import annotations

import json

import pytest
import torch

from fastlm.data.images import synthetic_examples, write_image_dataset
from fastlm.tasks import evaluate, get_task
from fastlm.tasks.captioning import states
from fastlm.tasks.config import task_config_from_dict
from fastlm.tasks.datasets import DatasetError
from fastlm.tasks.loop import finetune
from tests.tasks.task_helpers import tiny_config


def _config(train, **keys):
    raw = tiny_config(train, **keys)
    raw["task"].update(image_size=16, patch_size=4, vision_layers=1, max_new_tokens=12)
    raw["model"]["max_seq_len"] = 64
    return task_config_from_dict(raw, get_task("captioning").Section, name="capt")


def _dataset(tmp_path, n=120, question=False):
    write_image_dataset(synthetic_examples(n, seed=0, image_size=16, words=False), tmp_path / "set")
    rows = [json.loads(line) for line in (tmp_path / "set" / "captions.jsonl").read_text().splitlines()]
    if question:
        for r in rows:
            r["question"] = "what colour are the shapes?"
            r["caption"] = r["colour"]
    (tmp_path / "set" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(tmp_path / "set" / "train.jsonl")


def test_states_reads_the_synthetic_wording():
    caption = "two red circles at the top, the word cat"
    assert states(caption, "count", 2) and not states(caption, "count", 3)
    assert states(caption, "shape", "circle") and not states(caption, "shape", "square")
    assert states(caption, "colour", "red") and states(caption, "region", "top") and states(caption, "word", "cat")


def test_collate_takes_the_loss_on_the_caption_only(tmp_path):
    task = get_task("captioning")
    tc = _config(_dataset(tmp_path, 6))
    batch = task.collate([{"pixels": torch.zeros(3, 16, 16), "prompt": [0, 5, 6], "target": [7, 8, 0], "eos": 0},
                          {"pixels": torch.zeros(3, 16, 16), "prompt": [0], "target": [9, 0], "eos": 0}])
    assert batch["input_ids"].tolist() == [[0, 5, 6, 7, 8, 0], [0, 9, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 7, 8, 0], [-100, 9, 0, -100, -100, -100]]
    assert tc.task.image_size == 16


def test_training_runs_scores_and_evaluate_reproduces(tmp_path):
    tc = _config(_dataset(tmp_path, 60), steps=20)
    result = finetune(get_task("captioning"), tc, tmp_path / "run", show_progress=False)
    m = result["metrics"]
    for key in ("loss", "bleu", "chrf", "exact_match", "colour_accuracy", "count_accuracy", "baseline_chrf"):
        assert key in m
    assert 0 <= m["colour_accuracy"] <= 1 and m["loss"] < 5.0  # below the uniform loss over the 300 tokens
    again = evaluate("captioning", tmp_path / "run")
    assert again["metrics"]["loss"] == pytest.approx(m["loss"], rel=1e-4)
    assert again["metrics"]["chrf"] == pytest.approx(m["chrf"])  # greedy decoding is deterministic


def test_a_question_is_the_prompt(tmp_path):
    tc = _config(_dataset(tmp_path, 40, question=True), steps=5)
    tc.task.question_field = "question"
    task = get_task("captioning")
    records = task.read_split(tc, tc.task.train, None)
    assert records[0]["question"] == "what colour are the shapes?" and records[0]["caption"] in (
        "red", "green", "blue", "yellow", "purple")
    m = finetune(task, tc, tmp_path / "run", show_progress=False)["metrics"]
    assert "exact_match" in m


def test_the_decoder_reads_the_image(tmp_path):
    """Visual question answering of the shapes' colour (5 colours): far above the majority answer."""
    train = _dataset(tmp_path, 360, question=True)
    rows = open(train).read().splitlines()
    (tmp_path / "set" / "val.jsonl").write_text("\n".join(rows[:60]) + "\n")
    open(train, "w").write("\n".join(rows[60:]) + "\n")
    tc = _config(train, steps=250, lr=3e-3)
    tc.task.validation = str(tmp_path / "set" / "val.jsonl")
    tc.task.question_field = "question"
    tc.config.model.d_model = 64
    m = finetune(get_task("captioning"), tc, tmp_path / "run", show_progress=False)["metrics"]
    assert m["exact_match"] > max(0.5, m["baseline_exact_match"] + 0.25)


def test_a_bad_image_names_file_and_line(tmp_path):
    train = _dataset(tmp_path, 4)
    lines = open(train).read().splitlines()
    bad = json.loads(lines[2])
    bad["image"] = "images/missing.png"
    lines[2] = json.dumps(bad)
    open(train, "w").write("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"train.jsonl:3: cannot read image"):
        get_task("captioning").read_split(_config(train), train, None)


def test_task_vision_takes_the_vit_family_keys(tmp_path):
    """task.vision: the tower's keys (a vit [model] section's) over the shorthand and the text model's width."""
    from fastlm.train.errors import ConfigError

    train = _dataset(tmp_path, 24)
    raw = tiny_config(train, steps=3)
    raw["task"].update(image_size=16, patch_size=4, vision_layers=1, max_new_tokens=4,
                       vision={"positions": "rope2d", "n_layer": 2, "channels": 1, "image_size": 8, "pool": "mean"})
    raw["model"]["max_seq_len"] = 64
    task = get_task("captioning")
    tc = task_config_from_dict(raw, task.Section, name="capt")
    tower = tc.task.tower(32, 2)
    assert (tower.positions, tower.n_layer, tower.channels, tower.image_size, tower.patch_size, tower.d_model,
            tower.d_ff, tower.pool) == ("rope2d", 2, 1, 8, 4, 32, 128, "mean")
    assert task.read_split(tc, train, None)[0]["pixels"].shape == (1, 8, 8)  # read grey at the tower's size
    result = finetune(task, tc, tmp_path / "run", show_progress=False)
    vision = result["model"].model.vision
    assert vision.pos_emb is None and vision.config.positions == "rope2d" and len(vision.blocks) == 2
    assert "positions = \"rope2d\"" in (tmp_path / "run" / "config.toml").read_text()
    assert evaluate("captioning", tmp_path / "run")["metrics"]["loss"] == pytest.approx(result["metrics"]["loss"],
                                                                                       rel=1e-4)
    for vision, message in [({"patch_size": 3}, "task.vision.image_size = 16: expected a multiple of "
                                                "task.vision.patch_size = 3"),
                            ({"positions": "sincos"}, "task.vision.positions = 'sincos': expected one of"),
                            ({"channels": 4}, "task.vision.channels = 4: expected 1 .grey. or 3"),
                            ({"layers": 2}, "unknown key task.layers in task.vision")]:
        raw["task"]["vision"] = vision
        with pytest.raises(ConfigError, match=message):
            task_config_from_dict(raw, task.Section, name="capt")
