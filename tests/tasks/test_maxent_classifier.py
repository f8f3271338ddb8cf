"""task.model = "maxent": the classifier against a dense count-matrix logistic regression, a run
through finetune/evaluate, and its accuracy on the demo data against scikit-learn's LogisticRegression
fitted on exactly the same hashed features (fastlm/tasks/maxent_baseline.py)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from fastlm.tasks import get_task
from fastlm.tasks.config import load_task_config, task_config_from_dict
from fastlm.tasks.loop import evaluate_run, finetune
from fastlm.tasks.maxent_classifier import MaxEntClassifier, pad_features, text_features
from fastlm.train.errors import ConfigError
from tests.tasks.task_helpers import synthetic_records, tiny_config, write_jsonl

TASK = get_task("classification")


def test_classifier_is_logistic_regression_on_feature_counts():
    buckets, labels = 50, 3
    model = MaxEntClassifier(buckets, labels)
    torch.nn.init.normal_(model.weight)
    torch.nn.init.normal_(model.bias)
    rows = [text_features([4, 7, 4, 9], buckets), text_features([1], buckets), []]
    counts = torch.zeros(len(rows), buckets, dtype=torch.float64)
    for i, r in enumerate(rows):
        for f in r:
            counts[i, f] += 1
    want = counts @ model.weight.detach().double()[:buckets] + model.bias.detach().double()
    y = torch.tensor([0, 2, 1])
    out = model({"features": pad_features(rows, buckets), "labels": y})
    torch.testing.assert_close(out["logits"].double(), want, atol=1e-5, rtol=1e-5)
    assert out["loss"].item() == pytest.approx(F.cross_entropy(want, y).item(), rel=1e-5)
    assert len(rows[0]) == 4 + 3  # 4 unigrams (with the repeat) and 3 bigrams


def test_maxent_run_learns_and_evaluates_the_same(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_records(240, seed=0))
    val = write_jsonl(tmp_path / "val.jsonl", synthetic_records(60, seed=1))
    raw = tiny_config(train, val, lr=0.05)
    raw["task"].update({"model": "maxent", "hash_buckets": 4096})
    tc = task_config_from_dict(raw, TASK.Section)
    result = finetune(TASK, tc, tmp_path / "run", show_progress=False)
    assert isinstance(result["model"], MaxEntClassifier)
    assert result["metrics"]["accuracy"] >= 0.95  # the label words are unigram features
    again = evaluate_run(TASK, tmp_path / "run")["metrics"]
    assert again["accuracy"] == result["metrics"]["accuracy"]
    assert again["loss"] == pytest.approx(result["metrics"]["loss"], rel=1e-6)
    assert 'model = "maxent"' in (tmp_path / "run" / "config.toml").read_text()


@pytest.mark.parametrize("key, value, message", [
    ("model", "svm", "task.model = 'svm'"), ("hash_buckets", 0, "task.hash_buckets = 0"),
])
def test_bad_task_keys(key, value, message):
    raw = tiny_config("x.jsonl")
    raw["task"][key] = value
    with pytest.raises(ConfigError, match=message):
        task_config_from_dict(raw, TASK.Section)


def _compare_on_demo(tmp_path, examples: str):
    from fastlm.tasks.maxent_baseline import sklearn_baseline

    tc = load_task_config("classification-demo", TASK.Section, ["task.model=maxent", f"task.train={examples}"])
    finetune(TASK, tc, tmp_path / "run", show_progress=False)
    return sklearn_baseline(tmp_path / "run")


def _two_standard_errors(accuracy: float, n: int) -> float:
    return 2 * math.sqrt(accuracy * (1 - accuracy) / n)


def test_accuracy_on_the_demo_data_matches_sklearn(tmp_path):
    """The demo's 300 validation examples: one point is 3 examples, while two standard errors of an
    accuracy near 0.93 on 300 examples are about 3 points, so the tolerance is the larger of 1 point
    and that (the slow test below holds it to 1 point on 1000 validation examples)."""
    result = _compare_on_demo(tmp_path, "demo:langid")
    print(json.dumps(result))
    n = result["validation_examples"]
    tolerance = max(0.01, _two_standard_errors(result["sklearn_accuracy"], n))
    assert result["sklearn_accuracy"] > 0.85  # the baseline itself works
    assert abs(result["fastlm_accuracy"] - result["sklearn_accuracy"]) <= tolerance, result


@pytest.mark.slow
def test_accuracy_on_10000_demo_examples_within_one_point_of_sklearn(tmp_path):
    result = _compare_on_demo(tmp_path, "demo:langid:10000")
    print(json.dumps(result))
    assert result["validation_examples"] >= 900
    assert abs(result["fastlm_accuracy"] - result["sklearn_accuracy"]) <= 0.01, result
