"""fastlm card: MODEL_CARD.md from a run directory, its facts checked against independent sources (the
model built from the run, hashes of the files, the config), optional reports, a federated run."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from fastlm.accountability.card import model_card, write_model_card
from fastlm.cli import main
from tests.train.train_helpers import micro_config


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def run_copy(lm_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(lm_run, out)
    return out


def test_card_states_what_the_run_directory_records(lm_run, tmp_path, capsys):
    from fastlm.data.sources import resolve_source
    from fastlm.train.run import load_run

    out = tmp_path / "card.md"
    assert main(["card", str(lm_run), "--out", str(out)]) == 0
    card = out.read_text()
    _, model, _ = load_run(lm_run)
    assert f"| parameters | {model.num_params():,} |" in card
    assert _sha(lm_run / "model.safetensors") in card
    assert _sha(lm_run / "tokenizer.json") in card
    for path in resolve_source("builtin", builtin_modules=[]).files:      # the data source, by content
        assert _sha(path) in card
    config = micro_config()
    tokens = config.train.steps * config.train.global_batch_size * config.data.seq_len
    assert f"| optimizer steps | {config.train.steps} |" in card
    assert f"| tokens processed | {tokens:,} |" in card
    assert "1 x cpu" in card                                              # environment.json's launch
    final = [json.loads(line) for line in (lm_run / "metrics.jsonl").read_text().splitlines()][-1]
    assert f"| val_loss | {final['val_loss']:.6g} |" in card
    for title in ("Model details", "Intended use", "Training data", "Tokenizer", "Training procedure", "Compute",
                  "Evaluation", "Fairness and bias", "Privacy", "Limitations"):
        assert f"\n## {title}\n" in card
    assert card.count("_To be written by the model's owner") == 2
    assert "did not use differential privacy" in card


def test_prepared_corpus_hashes_are_those_of_the_cached_token_files(lm_run, fastlm_cache):
    meta = next((fastlm_cache / "corpora").glob("*/meta.json"))
    card = model_card(lm_run)
    assert json.loads(meta.read_text())["key"] in card
    for name in ("train.bin", "val.bin"):
        assert f"| sha256 {name} | `{_sha(meta.parent / name)}` |" in card


def test_user_text_and_reports_privacy_fairness_probe(run_copy):
    (run_copy / "privacy.json").write_text(json.dumps({"epsilon": 3.25, "delta": 1e-5, "noise_multiplier": 1.1}))
    (run_copy / "eval").mkdir()
    (run_copy / "eval" / "fairness.json").write_text(json.dumps({"demographic_parity_difference": 0.125,
                                                                 "groups": {"a": {"accuracy": 0.9}}}))
    (run_copy / "probe.json").write_text(json.dumps({"stereotype_rate": 0.61}))
    path = write_model_card(run_copy, intended_use="Research on tiny models.", limitations="Knows only pydoc.")
    card = path.read_text()
    assert path == run_copy / "MODEL_CARD.md"
    assert "Research on tiny models." in card and "Knows only pydoc." in card
    assert "_To be written" not in card
    assert "epsilon = 3.25, delta = 1e-05" in card
    assert "| demographic_parity_difference | 0.125 |" in card and '"accuracy": 0.9' in card
    assert "| stereotype_rate | 0.61 |" in card


def test_a_federated_run(run_copy):
    """A federated run's config has a [federated] section and metrics lines per round (fastlm.federated)."""
    config = (run_copy / "config.toml").read_text()
    (run_copy / "config.toml").write_text(config + "\n[federated]\nclients = 8\nclients_per_round = 4\nrounds = 3\n"
                                          "local_steps = 2\nsecure_aggregation = true\n"
                                          "client_dp = {clip = 1.0, noise_multiplier = 1.0}\n")
    rounds = [{"step": r, "round": r, "loss": 5.0, "clients": 4, "round_s": 1.5, "epsilon": 0.5 * r} for r in (1, 2, 3)]
    (run_copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    card = model_card(run_copy)
    assert "| federated rounds | 3 |" in card and "| clients | 8 |" in card
    assert "| round wall time (sum) | 4.5 s |" in card
    assert f"| tokens processed (all clients) | {3 * 4 * 2 * 4 * 32:,} |" in card   # rounds x clients x steps x batch
    assert "User-level differential privacy" in card and "epsilon = 1.5" in card
    assert "secure aggregation" in card


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["card", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["card", str(tmp_path / "empty")]) == 1
    assert "config.toml is missing" in capsys.readouterr().err


def test_a_classification_task_run(classifier_runs, capsys):
    import tomllib

    from fastlm.tasks import get_task
    from fastlm.tasks.loop import evaluate_run

    run = classifier_runs["llama"]
    result = evaluate_run(get_task("classification"), run)
    card = model_card(run)
    task = tomllib.loads((run / "config.toml").read_text())["task"]
    for key in ("train", "validation"):
        assert f"`{task[key]}` sha256 `{_sha(__import__('pathlib').Path(task[key]))}`" in card
    train = tomllib.loads((run / "config.toml").read_text())["train"]
    assert f"| examples processed | {train['steps'] * train['global_batch_size']:,} |" in card
    assert f"| accuracy | {result['metrics']['accuracy']:.6g} |" in card
    assert "Prepared corpus" not in card
