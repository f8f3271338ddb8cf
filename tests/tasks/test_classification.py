"""Text classification: the mechanics of finetune/evaluate on a small synthetic dataset, k-fold,
an encoder backbone, the CLI, and malformed datasets reported before training."""
import json

import pytest
import torch

from fastlm.eval import metrics as M
from fastlm.tasks import get_task
from fastlm.tasks.config import task_config_from_dict
from fastlm.tasks.datasets import DatasetError
from fastlm.tasks.loop import evaluate_run, finetune
from tests.tasks.task_helpers import synthetic_records, tiny_config, write_jsonl

TASK = get_task("classification")


def _tc(raw, *overrides):
    return task_config_from_dict(raw, TASK.Section, overrides)


@pytest.fixture
def data(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_records(240, seed=0))
    val = write_jsonl(tmp_path / "val.jsonl", synthetic_records(60, seed=1))
    return train, val


def _losses(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "loss" in r]


def test_decoder_classifier_learns_and_writes_outputs(tmp_path, data):
    out = tmp_path / "run"
    result = finetune(TASK, _tc(tiny_config(*data)), out, show_progress=False)
    losses = _losses(out)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5  # the loss falls
    m = result["metrics"]
    assert m["accuracy"] > 0.6  # 3 balanced classes: chance is 1/3
    for name in ("config.toml", "model.safetensors", "tokenizer.json", "task_info.json", "metrics.json",
                 "predictions.jsonl", "confusion_matrix.json", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 60
    # metrics.json agrees with the predictions written next to it
    y_true, y_pred = [p["label"] for p in preds], [p["prediction"] for p in preds]
    assert m["accuracy"] == pytest.approx(M.accuracy(y_true, y_pred))
    assert m["f1_macro"] == pytest.approx(M.f1(y_true, y_pred, average="macro"))
    cm = json.loads((out / "confusion_matrix.json").read_text())
    assert cm["labels"] == ["animal", "color", "number"]
    assert cm["matrix"] == M.confusion_matrix(y_true, y_pred, labels=cm["labels"]).tolist()
    assert sum(map(sum, cm["matrix"])) == 60
    # a finished run scores the same again, and on another file
    again = evaluate_run(TASK, out)
    assert again["metrics"]["accuracy"] == pytest.approx(m["accuracy"])
    assert (out / "eval" / "metrics.json").is_file()
    other = write_jsonl(tmp_path / "other.jsonl", synthetic_records(30, seed=5))
    assert evaluate_run(TASK, out, data=other)["metrics"]["examples"] == 30


def test_encoder_backbone_and_mean_pooling(tmp_path, data):
    raw = tiny_config(*data, family="bert", steps=20)
    result = finetune(TASK, _tc(raw), tmp_path / "enc", show_progress=False)
    losses = _losses(tmp_path / "enc")
    assert sum(losses[-5:]) < sum(losses[:5])
    assert 0 <= result["metrics"]["accuracy"] <= 1
    result = finetune(TASK, _tc(tiny_config(*data, steps=10), "task.pooling=mean"), tmp_path / "mean",
                      show_progress=False)
    assert result["metrics"]["examples"] == 60


def test_k_fold(tmp_path, data):
    raw = tiny_config(data[0], steps=4)
    result = finetune(TASK, _tc(raw, "task.k_folds=3"), tmp_path / "kf", show_progress=False)
    summary = json.loads((tmp_path / "kf" / "metrics.json").read_text())
    assert summary["k_folds"] == 3 and len(summary["folds"]) == 3
    accs = [f["accuracy"] for f in summary["folds"]]
    assert summary["accuracy_mean"] == pytest.approx(sum(accs) / 3)
    # the folds partition the 240 records
    assert sum(f["examples"] for f in summary["folds"]) == 240
    assert all((tmp_path / "kf" / f"fold-{i}" / "model.safetensors").is_file() for i in range(3))
    assert result["metrics"] == summary


def test_held_out_split_when_no_validation_file(tmp_path, data):
    result = finetune(TASK, _tc(tiny_config(data[0], steps=2), "data.val_fraction=0.25"), tmp_path / "r",
                      show_progress=False)
    assert result["metrics"]["examples"] == 60


def test_csv_input(tmp_path):
    rows = synthetic_records(60)
    lines = ["sentence,category"] + [f"\"{r['text']}\",{r['label']}" for r in rows]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    raw = tiny_config(str(tmp_path / "d.csv"), steps=2)
    raw["task"].update(text_field="sentence", label_field="category")
    result = finetune(TASK, _tc(raw), tmp_path / "r", show_progress=False)
    assert result["metrics"]["labels"] == ["animal", "color", "number"]


# ---------------------------------------------------------------- malformed datasets

GOOD = '{"text": "a red cat", "label": "x"}\n{"text": "blue dog", "label": "y"}\n'


@pytest.mark.parametrize("content, suffix, message", [
    (GOOD + '{"text": "no label here"}\n', ".jsonl", r"bad\.jsonl:3: missing field 'label'"),
    (GOOD + '{"text": "broken", \n', ".jsonl", r"bad\.jsonl:3: invalid JSON"),
    (GOOD + '["a", "list"]\n', ".jsonl", r"bad\.jsonl:3: expected a JSON object"),
    (GOOD + '{"text": "", "label": "x"}\n', ".jsonl", r"bad\.jsonl:3: field 'text' is empty"),
    (GOOD + '{"text": 7, "label": "x"}\n', ".jsonl", r"bad\.jsonl:3: field 'text' must be a string"),
    (GOOD + '{"text": "ok", "label": [1]}\n', ".jsonl", r"bad\.jsonl:3: label field 'label' must be"),
    ("text,label\na b,x\nc d,y,extra\n", ".csv", r"bad\.csv:3: more values"),
    ("words,label\na b,x\n", ".csv", r"bad\.csv:2: missing field 'text'"),
    (GOOD, ".txt", r"unknown dataset format"),
])
def test_malformed_training_file_is_reported_before_training(tmp_path, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    out = tmp_path / "run"
    with pytest.raises(DatasetError, match=message):
        finetune(TASK, _tc(tiny_config(str(path), steps=1)), out, show_progress=False)
    assert not out.exists()


def test_unknown_label_in_validation_file(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", synthetic_records(30))
    val = tmp_path / "v.jsonl"
    val.write_text('{"text": "red cat", "label": "animal"}\n{"text": "hmm", "label": "vegetable"}\n')
    with pytest.raises(DatasetError, match=r"v\.jsonl:2: unknown label 'vegetable'"):
        finetune(TASK, _tc(tiny_config(train, str(val))), tmp_path / "run", show_progress=False)
    with pytest.raises(DatasetError, match="dataset file not found"):
        finetune(TASK, _tc(tiny_config(str(tmp_path / "missing.jsonl"))), tmp_path / "run", show_progress=False)


def test_bad_task_keys(tmp_path):
    from fastlm.train.errors import ConfigError

    raw = tiny_config("x.jsonl")
    with pytest.raises(ConfigError, match="task.pooling"):
        _tc(raw, "task.pooling=max")
    with pytest.raises(ConfigError, match="unknown key task.nope"):
        _tc(raw, "task.nope=1")
    with pytest.raises(ConfigError, match="train.adversarial"):
        _tc(raw, "train.adversarial=fgsm")
    for sync in ("local_sgd", "async", "param_server"):  # not silently trained every step
        with pytest.raises(ConfigError, match=f'parallel.sync = "{sync}": fastlm finetune synchronises every step'):
            finetune(TASK, _tc(raw, f'parallel.sync="{sync}"'), tmp_path / sync, show_progress=False)


# ---------------------------------------------------------------- CLI

def test_cli_finetune_and_evaluate(tmp_path, data, capsys):
    from fastlm.cli import main
    from fastlm.train.config import dumps_toml

    cfg = tmp_path / "cls.toml"
    cfg.write_text(dumps_toml(tiny_config(*data, steps=3)))
    assert main(["finetune", "classification", str(cfg), "--out", str(tmp_path / "r"), "--quiet",
                 "--set", "train.steps=2"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["evaluate", "classification", str(tmp_path / "r")]) == 0
    assert "results:" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n')
    assert main(["finetune", "classification", str(cfg), "--set", f"task.train={bad}", "--out",
                 str(tmp_path / "r2")]) == 1
    assert "bad.jsonl:1: missing field 'label'" in capsys.readouterr().err
    assert main(["finetune", "translation-x", str(cfg)]) == 1
    assert "unknown task" in capsys.readouterr().err


def test_resume_matches_an_uninterrupted_run(tmp_path, data):
    import shutil

    import safetensors.torch

    raw = tiny_config(*data, steps=6)
    raw["checkpoint"] = {"every": 3, "keep": 2}
    finetune(TASK, _tc(raw), tmp_path / "a", show_progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step_0000006")
    (tmp_path / "b" / "model.safetensors").unlink()
    finetune(TASK, _tc(raw), tmp_path / "b", show_progress=False, resume=True)
    a = safetensors.torch.load_file(tmp_path / "a" / "model.safetensors")
    b = safetensors.torch.load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == [1, 2, 3, 4, 5, 6]  # the redone steps replaced, not duplicated
    from fastlm.train.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no checkpoint"):
        shutil.rmtree(tmp_path / "b" / "checkpoints")
        finetune(TASK, _tc(raw), tmp_path / "b", show_progress=False, resume=True)


def test_final_weights_are_sealed_and_verified(tmp_path, data):
    """The task loop writes model.safetensors like the trainer (temporary name, then renamed, with
    its sha256 in weights.json); one flipped byte is an error when the run is evaluated."""
    from fastlm.train.errors import CheckpointError

    out = tmp_path / "run"
    finetune(TASK, _tc(tiny_config(*data, steps=2)), out, show_progress=False)
    seal = json.loads((out / "weights.json").read_text())["files"]["model.safetensors"]
    assert seal["bytes"] == (out / "model.safetensors").stat().st_size
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    weights = bytearray((out / "model.safetensors").read_bytes())
    weights[-3] ^= 0x10
    (out / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(CheckpointError, match="model.safetensors is corrupted"):
        evaluate_run(TASK, out)
