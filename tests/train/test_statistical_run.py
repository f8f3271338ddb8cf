"""`fastlm train ngram` / `fastlm train hmm`: fitted models as runs with the Transformers' data,
tokenizer, validation tokens, run directory and metrics, and `fastlm eval` / `generate` on them."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastlm.cli import main
from fastlm.train import Trainer, load_config
from fastlm.train.errors import CheckpointError, ConfigError
from fastlm.train.metrics import read_metrics

# The micro data of the trainer tests (tests/train/train_helpers.py): the pydoc topics, 320 tokens.
DATA = ["data.vocab_size=320", "data.seq_len=32", "data.builtin_modules=[]",
        "train.micro_batch_size=2", "train.eval_batches=3"]
HMM_KEYS = ["model.n_states=6", "model.iterations=3", "model.chunk_len=256"]


@pytest.fixture(scope="module")
def ngram_run(tmp_path_factory, fastlm_cache):
    out = tmp_path_factory.mktemp("runs") / "ngram"
    summary = Trainer(load_config("ngram", [*DATA, "model.order=3"]), out_dir=out, show_progress=False).fit()
    return out, summary


@pytest.fixture(scope="module")
def hmm_run(tmp_path_factory, fastlm_cache):
    out = tmp_path_factory.mktemp("runs") / "hmm"
    summary = Trainer(load_config("hmm", [*DATA, *HMM_KEYS]), out_dir=out, show_progress=False).fit()
    return out, summary


def _validation_windows(config):
    """The windows a GPT run of this [data]/[train] is evaluated on, cut here by hand."""
    from fastlm.train.data import run_corpus

    corpus = run_corpus(config, None)
    seq, batch, n = config.data.seq_len, config.train.micro_batch_size, config.train.eval_batches
    val = np.asarray(corpus.val_tokens, dtype=np.int64)
    windows = [val[i * seq:(i + 1) * seq] for i in range(batch * n)]
    return [torch.from_numpy(np.stack(windows[b * batch:(b + 1) * batch])) for b in range(n)]


def test_ngram_run_directory_and_the_gpt_validation_tokens(ngram_run):
    from fastlm.lm import NGramLM

    out, summary = ngram_run
    for name in ("model.arpa", "tokenizer.json", "config.toml", "metrics.jsonl"):
        assert (out / name).is_file(), name
    config = load_config(out / "config.toml")
    assert config.model.family == "ngram" and config.model.order == 3
    lm = NGramLM.from_arpa(out / "model.arpa")
    windows = _validation_windows(config)
    expected = float(np.mean([-lm.logprob(w, bos=False)[:, 1:].mean().item() for w in windows]))
    assert summary["val_loss"] == pytest.approx(expected, rel=1e-6)
    assert math.isfinite(summary["val_ppl"]) and summary["val_ppl"] < 320  # better than uniform
    last = read_metrics(out)[-1]
    assert last["val_loss"] == pytest.approx(summary["val_loss"]) and last["train_tokens"] > 0


def test_higher_order_ngram_fits_the_validation_tokens_better(ngram_run, tmp_path):
    _, trigram = ngram_run
    unigram = Trainer(load_config("ngram", [*DATA, "model.order=1"]), out_dir=tmp_path / "u",
                      show_progress=False).fit()
    assert trigram["val_loss"] < unigram["val_loss"]


def test_eval_of_a_fitted_run_repeats_its_validation_loss(ngram_run, hmm_run, capsys):
    for out, summary in (ngram_run, hmm_run):
        assert main(["eval", str(out)]) == 0
        printed = capsys.readouterr().out
        assert f"val_loss {summary['val_loss']:.4f}" in printed


def test_generate_from_fitted_runs(ngram_run, hmm_run, capsys):
    for out, _ in (ngram_run, hmm_run):
        assert main(["generate", str(out), "--prompt", "The function", "--max-new-tokens", "12", "--seed", "3"]) == 0
        first = capsys.readouterr().out
        assert first.startswith("The function")
        assert main(["generate", str(out), "--prompt", "The function", "--max-new-tokens", "12", "--seed", "3"]) == 0
        assert capsys.readouterr().out == first  # seeded


def test_greedy_generation_follows_the_most_likely_token(ngram_run):
    from fastlm.data.tokenizer import load_tokenizer
    from fastlm.lm import NGramLM
    from fastlm.train.generate import generate_text

    out, _ = ngram_run
    text = generate_text(out, "The", max_new_tokens=5, temperature=0.0)
    tok = load_tokenizer(out / "tokenizer.json")
    lm = NGramLM.from_arpa(out / "model.arpa")
    ids = tok.encode("The", add_special_tokens=False).ids
    for _ in range(5):
        best = int(lm.next_token_logprobs(torch.tensor(ids), bos=False).argmax())  # the stream, as trained
        if best >= 320:
            break
        ids.append(best)
    assert text == tok.decode(ids, skip_special_tokens=True)


def test_hmm_run_logs_em_and_scores_the_gpt_validation_tokens(hmm_run):
    from fastlm.lm import HMM

    out, summary = hmm_run
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    records = read_metrics(out)
    em = [r["train_loss"] for r in records if "train_loss" in r]
    assert 2 <= len(em) <= 3 and em[-1] < em[0]  # EM learns (the pseudocount makes it MAP-EM: no strict monotony)
    hmm = HMM.load(out / "model.safetensors")
    windows = _validation_windows(load_config(out / "config.toml"))
    expected = float(np.mean([-hmm.token_logprobs(w)[:, 1:].mean().item() for w in windows]))
    assert summary["val_loss"] == pytest.approx(expected, rel=1e-6)
    assert summary["val_ppl"] < 320


def test_unseen_validation_tokens_keep_a_finite_hmm_perplexity(tmp_path):
    from fastlm.lm import HMM

    out = tmp_path / "hmm"
    Trainer(load_config("hmm", [*DATA, *HMM_KEYS, "model.vocab_size=400"]), out_dir=out, show_progress=False).fit()
    hmm = HMM.load(out / "model.safetensors")
    never_seen = torch.tensor([[5, 399, 398, 7]])  # ids 320..399 are no token of the 320-token tokenizer
    assert torch.isfinite(hmm.token_logprobs(never_seen)).all()


@pytest.mark.parametrize("overrides, message", [
    (["model.order=0"], "model.order = 0"),
    (["model.smoothing=\"good_turing\""], "model.smoothing"),
    (["model.n_layer=2"], "unknown key model.n_layer for model.family = \"ngram\""),
    (["model.prune=[0, -1]"], "model.prune"),
])
def test_bad_ngram_config_names_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config("ngram", overrides)


def test_fitted_runs_refuse_what_they_cannot_do(ngram_run, tmp_path, monkeypatch):
    out, _ = ngram_run
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(load_config("ngram", DATA), out_dir=out, resume=True, show_progress=False).fit()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="one process"):
        Trainer(load_config("ngram", DATA), out_dir=tmp_path / "x", show_progress=False).fit()
    monkeypatch.delenv("WORLD_SIZE")
    assert not (tmp_path / "x").exists()
    with pytest.raises(CheckpointError, match="only fastlm eval and fastlm generate"):
        from fastlm.train.export import export_run

        export_run(out, tmp_path / "hf")
    assert main(["quantize", str(out), "--scheme", "w8a8", "--out", str(tmp_path / "q")]) == 1
