"""`fastlm evaluate classification RUN_DIR --groups COLUMN`: fairness.json and fairness.png beside
metrics.json, with the values of fairlearn on the predictions written next to them; a missing
column is one line naming it and the columns present."""
import json

import numpy as np
import pytest

from fastlm.cli import main
from fastlm.train.config import dumps_toml
from tests.tasks.task_helpers import tiny_config, write_jsonl
from tests.tasks.test_debias import planted_records


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("groups")
    train = write_jsonl(d / "train.jsonl", planted_records(400, 0))
    val = write_jsonl(d / "val.jsonl", planted_records(300, 1))
    cfg = d / "cls.toml"
    cfg.write_text(dumps_toml(tiny_config(train, val, steps=40, global_batch_size=32, micro_batch_size=32)))
    assert main(["finetune", "classification", str(cfg), "--out", str(d / "run"), "--quiet"]) == 0
    return d


def test_evaluate_groups_writes_fairness_beside_the_other_outputs(run, capsys):
    assert not (run / "run" / "fairness.json").exists()  # the run was trained without task.group_field
    assert main(["evaluate", "classification", str(run / "run"), "--groups", "group"]) == 0
    out = run / "run" / "eval"
    for name in ("metrics.json", "predictions.jsonl", "fairness.json", "fairness.png"):
        assert (out / name).is_file(), name
    assert (out / "fairness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "fairness.json").read_text())
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 300 and {p["group"] for p in preds} == {"a", "b"}
    assert report["groups"] == ["a", "b"] and report["positive_label"] == "pos"
    fm = pytest.importorskip("fairlearn.metrics")
    y_true = np.array([p["label"] == "pos" for p in preds], dtype=int)
    y_pred = np.array([p["prediction"] == "pos" for p in preds], dtype=int)
    groups = np.array([p["group"] for p in preds])
    eo = fm.equalized_odds_difference(y_true, y_pred, sensitive_features=groups)
    dp = fm.demographic_parity_difference(y_true, y_pred, sensitive_features=groups)
    assert report["gaps"]["equalized_odds_difference"]["value"] == pytest.approx(eo)
    assert report["gaps"]["demographic_parity_difference"]["value"] == pytest.approx(dp)
    gap = report["gaps"]["equalized_odds_difference"]
    low, high = gap["ci_low"], gap["ci_high"]
    assert low <= eo <= high
    assert report["tests"]["selection_chi2"] is not None and "score_mannwhitney" in report["tests"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fairness_equalized_odds_difference"] == pytest.approx(eo)
    assert "fairness_equalized_odds_difference" in capsys.readouterr().out


def test_missing_group_column_is_one_line(run, capsys):
    assert main(["evaluate", "classification", str(run / "run"), "--groups", "gender", "--out",
                 str(run / "e2")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "missing field 'gender'" in err and "has: text, label, group" in err
    assert not (run / "e2" / "fairness.json").exists()
