"""fastlm privacy audit: membership metrics, canaries, exposure, and the command end to end."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fastlm.cli import main
from fastlm.data.canaries import DIGITS, PREFIX, insert_canaries, read_record
from fastlm.privacy.audit import audit_run, metrics
from fastlm.privacy.audit.exposure import canary_exposures, exposure_from_sample
from fastlm.privacy.audit.membership import held_out_halves, split_documents
from fastlm.train.errors import FastlmError
from tests.train.train_helpers import micro_config

AUDITED = ["data.val_fraction=0.3", "train.steps=4", "checkpoint.every=0", "train.eval_every=0"]


# ---------------------------------------------------------------- metrics

def test_auc_matches_sklearn_and_the_pair_count():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(0.5, 1, 40), rng.normal(0, 1, 30)
    pairs = np.mean([(m > n) + 0.5 * (m == n) for m in members for n in nonmembers])  # Mann-Whitney
    labels = np.r_[np.ones(40), np.zeros(30)]
    assert metrics.auc(members, nonmembers) == pytest.approx(pairs)
    assert metrics.auc(members, nonmembers) == pytest.approx(roc_auc_score(labels, np.r_[members, nonmembers]))


def test_tpr_at_fpr_by_hand():
    nonmembers = np.arange(100.0)        # a threshold above 99 flags no non-member; above 98 flags 1 (1%)
    members = np.array([200.0, 150.0, 98.5, 50.0])
    assert metrics.tpr_at_fpr(members, nonmembers, 0.01) == pytest.approx(0.75)  # 200, 150, 98.5 at 1% FPR
    assert metrics.tpr_at_fpr(members, nonmembers, 0.0) == pytest.approx(0.5)    # 200, 150 with no false positive


def test_bootstrap_intervals_are_seeded_and_contain_the_estimate():
    rng = np.random.default_rng(1)
    members, nonmembers = rng.normal(1, 1, 200), rng.normal(0, 1, 200)
    a = metrics.summarize(members, nonmembers, resamples=200, seed=3)
    assert a == metrics.summarize(members, nonmembers, resamples=200, seed=3)
    assert a["auc_ci"][0] < a["auc"] < a["auc_ci"][1]
    assert 0.6 < a["auc"] < 0.9 and a["auc_ci"][1] - a["auc_ci"][0] < 0.2
    assert a["tpr_at_fpr_ci"][0] <= a["tpr_at_fpr"] <= a["tpr_at_fpr_ci"][1]
    perfect = metrics.summarize([5, 6, 7], [1, 2, 3], resamples=50)
    assert perfect["auc"] == 1.0 and perfect["auc_ci"] == [1.0, 1.0] and perfect["tpr_at_fpr"] == 1.0


# ---------------------------------------------------------------- canaries

def _char_encode(text: str) -> list[int]:
    return [ord(c) - 30 for c in text]  # eos is 0, no printable character maps to it


def test_canaries_are_inserted_whole_at_document_boundaries_deterministically():
    docs = [np.arange(1, 6 + i, dtype=np.uint16) for i in range(20)]
    tokens = np.concatenate([np.r_[d, 0] for d in docs]).astype(np.uint16)
    stream, record = insert_canaries(tokens, _char_encode, 0, count=3, repeats=2, seed=5)
    again, record2 = insert_canaries(tokens, _char_encode, 0, count=3, repeats=2, seed=5)
    assert np.array_equal(stream, again) and record == record2 and stream.dtype == np.uint16
    pieces = [tuple(d) for d in split_documents(stream, 0)]
    for c in record["canaries"]:
        assert c["text"].startswith(PREFIX + " ") and len(c["secret"]) == DIGITS
        assert c["token_ids"] == _char_encode(c["text"]) and pieces.count(tuple(c["token_ids"])) == 2
    canary_docs = {tuple(c["token_ids"]) for c in record["canaries"]}
    assert [p for p in pieces if p not in canary_docs] == [tuple(d) for d in docs]  # the rest, unchanged
    other, _ = insert_canaries(tokens, _char_encode, 0, count=3, repeats=2, seed=6)
    assert not np.array_equal(stream, other)


def test_a_run_plants_canaries_in_training_only_and_records_them(tmp_path):
    from fastlm.data import prepare_corpus
    from fastlm.train import Trainer
    from fastlm.train.data import run_corpus

    config = micro_config(*AUDITED, "data.canaries=2", "data.canary_repeats=3")
    Trainer(config, out_dir=tmp_path / "run", show_progress=False).fit()
    record = read_record(tmp_path / "run")
    assert record["repeats"] == 3 and len(record["canaries"]) == 2
    corpus = run_corpus(config, None)
    plain = prepare_corpus("builtin", vocab_size=config.data.vocab_size, val_fraction=0.3, builtin_modules=[],
                           show_progress=False)
    assert np.array_equal(corpus.val_tokens, plain.val_tokens)  # validation untouched
    assert len(corpus.train_tokens) == len(plain.train_tokens) + 3 * sum(len(c["token_ids"]) + 1
                                                                      for c in record["canaries"])
    train_docs = [tuple(d) for d in split_documents(corpus.train_tokens, corpus.eos_id)]
    for c in record["canaries"]:
        assert c["token_ids"] == corpus.encode(c["text"]) and train_docs.count(tuple(c["token_ids"])) == 3


# ---------------------------------------------------------------- exposure

def test_exposure_from_a_sample():
    rng = np.random.default_rng(0)
    candidates = rng.normal(40, 5, 5000)
    typical = exposure_from_sample(40.0, candidates, 29.9)
    assert typical["exposure"] == pytest.approx(1.0, abs=0.2) and typical["exposure_sampled"] == pytest.approx(1.0, abs=0.1)
    memorised = exposure_from_sample(5.0, candidates, 29.9)  # 7 sd below: beyond what 5000 samples resolve
    assert memorised["exposure_sampled"] == pytest.approx(math.log2(5001))
    assert memorised["exposure"] > 20


class _PrefersTokens(torch.nn.Module):
    """A language model that predicts `preferred[t]` after position t (and is flat otherwise)."""

    def __init__(self, preferred: list[int], vocab: int):
        super().__init__()
        self.preferred, self.vocab = preferred, vocab

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for t, token in enumerate(self.preferred[:input_ids.shape[1]]):
            logits[:, t, token] = 8.0
        return logits


def test_the_canary_a_model_prefers_is_exposed_and_a_random_one_is_not():
    tokens = np.concatenate([np.r_[np.arange(1, 9), 0]] * 4).astype(np.uint16)
    _, record = insert_canaries(tokens, _char_encode, 0, count=2, seed=0)
    model = _PrefersTokens(record["canaries"][0]["token_ids"], vocab=100)
    result = canary_exposures(model, record, _char_encode, torch.device("cpu"), candidates=500)
    exposed, other = result["canaries"]
    assert exposed["exposure"] > 15 and exposed["exposure_sampled"] == pytest.approx(math.log2(501))
    assert other["exposure"] < 5
    assert canary_exposures(model, record, _char_encode, torch.device("cpu"), limit=1, candidates=50)["audited"] == 1


def test_held_out_halves_are_disjoint():
    tokens = np.concatenate([np.r_[np.full(3, i + 1), 0] for i in range(5)]).astype(np.uint16)
    reference, evaluation = held_out_halves(tokens, 0)
    in_reference = {int(d[0]) for d in reference}
    in_evaluation = set(evaluation.tolist()) - {0}
    assert len(in_reference) == 2 and in_reference | in_evaluation == {1, 2, 3, 4, 5}
    assert not in_reference & in_evaluation and evaluation.size == 3 * 4
    assert [d.tolist() for d in held_out_halves(tokens, 0)[0]] == [d.tolist() for d in reference]  # fixed
    with pytest.raises(FastlmError, match="at least 2"):
        held_out_halves(np.array([1, 2, 0], dtype=np.uint16), 0)


# ---------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def canary_run(tmp_path_factory):
    from fastlm.train import Trainer

    out = tmp_path_factory.mktemp("runs") / "canary"
    Trainer(micro_config(*AUDITED, "data.canaries=3"), out_dir=out, show_progress=False).fit()
    return out


def test_the_audit_command_writes_its_results(canary_run, capsys):
    assert main(["privacy", "audit", str(canary_run), "--samples", "40", "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "loss threshold" in table and "canary exposure" in table
    result = json.loads((canary_run / "audit.json").read_text())
    assert (canary_run / "audit_roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["samples"]["members"] == result["samples"]["nonmembers"] == 40
    for attack in result["attacks"].values():
        assert 0 <= attack["auc_ci"][0] <= attack["auc"] <= attack["auc_ci"][1] <= 1
    assert result["reference"]["trained_by_audit"] and (canary_run / "audit-reference" / "model.safetensors").is_file()
    assert result["canaries"]["audited"] == 3
    assert all(0 <= c["exposure"] <= result["canaries"]["log2_space"] for c in result["canaries"]["canaries"])
    # An existing reference run, and the first canary only.
    again = audit_run(canary_run, reference=canary_run / "audit-reference", canaries=1, samples=20,
                      resamples=20, show_progress=False)
    assert not again["reference"]["trained_by_audit"] and again["canaries"]["audited"] == 1


def test_bad_input_is_one_line(tmp_path, canary_run, capsys):
    assert main(["privacy", "audit", str(tmp_path), "--quiet"]) == 1
    assert "is not a fastlm run directory" in capsys.readouterr().err
    no_canaries = tmp_path / "plain"
    (no_canaries).mkdir()
    for name in ("config.toml", "model.safetensors", "tokenizer.json"):
        (no_canaries / name).write_bytes((canary_run / name).read_bytes())
    assert main(["privacy", "audit", str(no_canaries), "--canaries", "2", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "planted no canaries" in err
    assert main(["privacy", "audit", str(canary_run), "--samples", "0", "--quiet"]) == 1
    assert "--samples = 0" in capsys.readouterr().err


def test_canary_config_is_checked():
    from fastlm.train import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.canaries = -1"):
        load_config("tiny", ["data.canaries=-1"])
    with pytest.raises(ConfigError, match="data.canary_repeats = 0"):
        load_config("tiny", ["data.canaries=2", "data.canary_repeats=0"])
    with pytest.raises(ConfigError, match="fitted from counts"):
        load_config("ngram", ["data.canaries=2"])


def test_samples_are_equal_counts_of_whole_windows():
    from fastlm.privacy.audit.membership import choose_samples

    train, held_out = np.arange(1000), np.arange(5000, 5330)  # 100 and 33 windows of 10
    members, nonmembers = choose_samples(train, held_out, 10, 500, seed=0)
    assert members.shape == nonmembers.shape == (33, 10)
    assert (members[:, 0] % 10 == 0).all() and (np.diff(members, axis=1) == 1).all()
    assert len(set(members[:, 0])) == 33 and nonmembers.min() >= 5000
    assert np.array_equal(members, choose_samples(train, held_out, 10, 500, seed=0)[0])
    assert choose_samples(train, held_out, 10, 5, seed=0)[0].shape == (5, 10)
    with pytest.raises(FastlmError, match="raise data.val_fraction"):
        choose_samples(train, held_out[:15], 10, 500, seed=0)
