"""Extractive QA: SQuAD reading and checks, sliding windows with stride, span labels, training."""
import json
import random

import pytest

from fastlm.tasks import get_task
from fastlm.tasks.config import task_config_from_dict
from fastlm.tasks.datasets import DatasetError
from fastlm.tasks.loop import evaluate_run, finetune
from fastlm.tasks.qa import read_squad
from fastlm.tasks.text import task_tokenizer
from tests.tasks.task_helpers import tiny_config

NAMES = "alice bob carol dave erin frank grace heidi ivan judy".split()
COLORS = "red blue green yellow purple orange black white pink brown".split()
TASK = get_task("qa")


def squad(n_paragraphs: int, seed: int, facts: int = 5) -> dict:
    rng = random.Random(seed)
    paragraphs = []
    for p in range(n_paragraphs):
        people = rng.sample(NAMES, facts)
        context, starts, colors = "", [], []
        for person in people:
            color = rng.choice(COLORS)
            sentence = f"{person} likes "
            starts.append(len(context) + len(sentence))
            colors.append(color)
            context += sentence + color + ". "
        k = rng.randrange(facts)
        paragraphs.append({"context": context.strip(), "qas": [
            {"id": f"{seed}-{p}", "question": f"what does {people[k]} like?",
             "answers": [{"text": colors[k], "answer_start": starts[k]}]}]})
    return {"data": [{"title": "t", "paragraphs": paragraphs}]}


def _write(path, doc):
    path.write_text(json.dumps(doc))
    return str(path)


def _config(train, val, **train_keys):
    raw = tiny_config(train, val, family="bert", **train_keys)
    raw["data"]["seq_len"] = 24  # shorter than a context: several windows each
    raw["task"]["stride"] = 6
    return task_config_from_dict(raw, TASK.Section)


def test_windows_cover_the_context_with_stride_and_label_the_answer(tmp_path):
    path = _write(tmp_path / "t.json", squad(20, 0))
    tc = _config(path, None)
    records = read_squad(tmp_path / "t.json")
    tok = task_tokenizer([r["context"] for r in records], 300, 303, None, None)
    examples = TASK.encode(tc, records, tok, {})
    by_question = {}
    for e in examples:
        by_question.setdefault(e["id"], []).append(e)
        assert len(e["ids"]) <= 24
        if e["start"]:
            # the labelled span reads the answer
            s, t = e["start"] - e["offset"], e["end"] - e["offset"]
            assert e["context"][e["offsets"][s][0]:e["offsets"][t][1]].strip() == e["answers"][0]
    n_windows = [len(w) for w in by_question.values()]
    assert max(n_windows) > 1  # long contexts were split
    for r in records:
        windows = by_question[r["id"]]
        ctx_len = len(tok.encode(r["context"], add_special_tokens=False).ids)
        # consecutive windows overlap by exactly `stride` tokens and together cover the context
        for a, b in zip(windows, windows[1:]):
            assert a["begin"] + len(a["ids"]) - a["offset"] - b["begin"] == 6
        assert windows[-1]["begin"] + len(windows[-1]["ids"]) - windows[-1]["offset"] == ctx_len
        assert sum(1 for w in windows if w["start"]) >= 1  # some window holds the answer


def test_qa_trains_and_scores(tmp_path):
    train = _write(tmp_path / "t.json", squad(120, 0))
    val = _write(tmp_path / "v.json", squad(15, 1))
    result = finetune(TASK, _config(train, val, steps=40), tmp_path / "run", show_progress=False)
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    m = result["metrics"]
    assert m["questions"] == 15 and m["windows"] > 15
    assert 0 <= m["exact_match"] <= m["f1"] <= 100
    preds = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert {p["id"] for p in preds} == {f"1-{i}" for i in range(15)}
    assert evaluate_run(TASK, tmp_path / "run")["metrics"]["f1"] == pytest.approx(m["f1"])


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["data"][0]["paragraphs"][1]["qas"][0]["answers"][0].update(answer_start=999),
     r"t\.json: data\[0\]\.paragraphs\[1\]\.qas\[0\] \(id '0-1'\)\.answers\[0\]: the span 999\.\..* is outside"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(text="nope"),
     r"paragraphs\[0\]\.qas\[0\].*does not read 'nope'"),
    (lambda d: d["data"][0]["paragraphs"][2].pop("context"), r"paragraphs\[2\]: missing or empty \"context\""),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(answers=[]), r"qas\[0\].*no answers"),
    (lambda d: d.pop("data"), r"expected a JSON object with a \"data\" list"),
])
def test_malformed_squad_is_reported(tmp_path, mutate, message):
    doc = squad(3, 0)
    mutate(doc)
    path = _write(tmp_path / "t.json", doc)
    with pytest.raises(DatasetError, match=message):
        finetune(TASK, _config(path, None, steps=1), tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()
