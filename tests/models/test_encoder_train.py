"""`fastlm train` with model.family = bert | roberta | albert (masked-LM pretraining), and
`fastlm export --format hf` of encoder and GPT runs (transformers loads the result)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fastlm.cli import main
from fastlm.train import Trainer, load_config

# The pydoc topics alone (builtin_modules = []), a near-byte vocabulary and short sequences: the
# masked tokens' context pays off within a few hundred steps of a 2-layer, 64-wide BERT.
SMALL = ["data.builtin_modules=[]", "data.vocab_size=300", "data.seq_len=32", "model.d_model=64", "model.n_head=4",
         "model.n_layer=2", "train.global_batch_size=16", "train.micro_batch_size=16", "train.precision=fp32",
         "train.eval_every=0", "train.eval_batches=4", "train.log_every=10"]


def unigram_entropy(tokens, vocab_size: int) -> float:
    counts = np.bincount(np.asarray(tokens), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "bert"
    config = load_config("bert-tiny", [*SMALL, "train.steps=300", "train.lr=2e-3", "train.warmup_steps=30",
                                       "train.min_lr=2e-4"])
    summary = Trainer(config, out_dir=out, show_progress=False).fit()
    return out, summary


def test_eval_and_generate_of_an_encoder_run(bert_run, capsys):
    from fastlm.train.evaluate import evaluate_run

    out, summary = bert_run
    # `fastlm eval` scores the same masked validation sequences as training did.
    assert evaluate_run(out)["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-5)
    assert main(["generate", str(out), "--prompt", "def"]) == 1
    assert "masked-LM encoder" in capsys.readouterr().err


def test_masked_lm_pretraining_beats_the_unigram_baseline(bert_run):
    from fastlm.data import prepare_corpus

    out, summary = bert_run
    corpus = prepare_corpus("builtin", vocab_size=300, builtin_modules=[])
    baseline = unigram_entropy(corpus.train_tokens, corpus.vocab_size)  # the best context-free guess
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first_eval = next(r["val_loss"] for r in log if "val_loss" in r)
    assert first_eval > baseline + 0.5  # starts near uniform over the vocabulary
    assert summary["val_loss"] < baseline - 0.2, (summary["val_loss"], baseline)
    config = (out / "config.toml").read_text()
    assert 'family = "bert"' in config and "vocab_size = 303" in config  # + [MASK], [CLS], [SEP]


@pytest.mark.parametrize("family,extra", [
    ("albert", ["data.sentence_order=true", "data.whole_word_mask=true", "data.masking=\"static\"",
                "model.embedding_size=16"]),
    ("roberta", []),
])
def test_other_families_and_options_train(tmp_path, family, extra):
    config = load_config("bert-tiny", [*SMALL, f"model.family={family}", "train.steps=3", "train.lr=1e-3",
                                       "train.warmup_steps=1", "train.min_lr=1e-4", *extra])
    summary = Trainer(config, out_dir=tmp_path / family, show_progress=False).fit()
    assert np.isfinite(summary["val_loss"])
    exported = tmp_path / "hf"
    assert main(["export", str(tmp_path / family), "--format", "hf", "--out", str(exported)]) == 0
    import transformers

    hf = transformers.AutoModel.from_pretrained(str(exported))
    assert type(hf).__name__ == {"albert": "AlbertModel", "roberta": "RobertaModel"}[family]


def test_encoder_config_errors(tmp_path):
    from fastlm.train.errors import ConfigError

    with pytest.raises(ConfigError, match="data.masking = \"sometimes\""):
        load_config("bert-tiny", ["data.masking=sometimes"])
    with pytest.raises(ConfigError, match="data.sentence_order = true: only for masked-LM models"):
        load_config("tiny", ["data.sentence_order=true"])
    with pytest.raises(ConfigError, match="model.vocab_size = 4096: expected at least data.vocab_size \\+ 3"):
        load_config("bert-tiny", ["model.vocab_size=4096"])
    with pytest.raises(ConfigError, match="data.pack = true: only for GPT"):
        load_config("bert-tiny", ["data.pack=true"])


def test_export_encoder_round_trip(bert_run, tmp_path):
    """fastlm export -> AutoModelForMaskedLM gives the run's logits; AutoModel loads the encoder."""
    import transformers

    from fastlm.train.run import load_run

    out, _ = bert_run
    exported = tmp_path / "hf"
    assert main(["export", str(out), "--format", "hf", "--out", str(exported)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in exported.iterdir()}
    _, model, _ = load_run(out)
    model.eval()
    hf = transformers.AutoModelForMaskedLM.from_pretrained(str(exported)).eval()
    ids = torch.randint(0, 300, (2, 20))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    with torch.no_grad():
        ours = model(ids, mask)
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()], atol=5e-5, rtol=1e-4)
    assert type(transformers.AutoModel.from_pretrained(str(exported))).__name__ == "BertModel"
    # fastlm reads its own export back.
    from fastlm.models import from_hf

    back = from_hf(exported)
    torch.testing.assert_close(back(ids, mask)[mask.bool()], ours[mask.bool()], atol=1e-6, rtol=1e-6)
    assert main(["export", str(out), "--format", "hf", "--out", str(exported)]) == 1  # not empty: refused


def test_export_gpt_round_trip(tmp_path):
    import transformers

    from fastlm.train.run import load_run

    config = load_config("tiny", ["model.n_layer=2", "model.n_head=4", "model.n_kv_head=2", "model.d_model=32",
                                  "data.vocab_size=300", "data.seq_len=32", "data.builtin_modules=[]",
                                  "train.steps=2", "train.global_batch_size=2", "train.micro_batch_size=2",
                                  "train.eval_batches=1", "train.precision=fp32", "checkpoint.every=0"])
    Trainer(config, out_dir=tmp_path / "gpt", show_progress=False).fit()
    exported = tmp_path / "hf"
    assert main(["export", str(tmp_path / "gpt"), "--format", "hf", "--out", str(exported)]) == 0
    _, model, _ = load_run(tmp_path / "gpt")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(exported)).eval()
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids), hf(input_ids=ids).logits, atol=5e-5, rtol=1e-4)
