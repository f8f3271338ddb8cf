"""data.deidentify: the prepared corpus holds none of the planted values, and the setting is part of the cache key."""
import json
import re

import pytest

from fastlm.data import prepare_corpus
from fastlm.train import ConfigError, load_config
from fastlm.train.errors import FastlmError

PLANTED = ["ann.lee@corp.example.com", "4111 1111 1111 1111", "GB82 WEST 1234 5698 7654 32", "+1 415 555 2671",
           "192.168.10.77", "078-05-1120"]
TYPES = ["email", "card", "iban", "phone", "ip", "ssn"]


def _write_corpus(path):
    filler = "the quick brown fox jumps over the lazy dog while the model learns to count tokens. "
    with open(path, "w", encoding="utf-8") as f:
        for i in range(40):
            value = PLANTED[i % len(PLANTED)]
            f.write(json.dumps({"text": f"record {i}: {filler * 3} contact {value} today. {filler}"}) + "\n")


def _all_text(corpus):
    return corpus.decode(corpus.train_tokens) + corpus.decode(corpus.val_tokens)


def test_prepared_corpus_has_no_planted_values(tmp_path):
    data = tmp_path / "d.jsonl"
    _write_corpus(data)
    plain = prepare_corpus(str(data), vocab_size=300, cache_dir=tmp_path / "c", show_progress=False)
    clean = prepare_corpus(str(data), vocab_size=300, cache_dir=tmp_path / "c", show_progress=False, deidentify=TYPES)
    assert clean.key != plain.key and clean.directory != plain.directory
    raw = _all_text(plain).replace(" ", "")
    assert all(v.replace(" ", "") in raw for v in PLANTED)      # the decoding can see them when they are there
    text = _all_text(clean).replace(" ", "")
    assert not [v for v in PLANTED if v.replace(" ", "") in text]
    assert "<EMAIL>" in text and "<CARD>" in text
    assert clean.meta["deid"]["counts"] == {t: 40 // 6 + (TYPES.index(t) < 40 % 6) for t in TYPES}
    assert not list(clean.directory.glob("deid-*"))             # the scratch text is gone
    again = prepare_corpus(str(data), vocab_size=300, cache_dir=tmp_path / "c", show_progress=False,
                           deidentify=TYPES[::-1])  # the same set of types in another order
    assert again.directory == clean.directory and again.meta["build_id"] == clean.meta["build_id"]  # reused
    other = prepare_corpus(str(data), vocab_size=300, cache_dir=tmp_path / "c", show_progress=False,
                           deidentify=TYPES, deid_operation="pseudonymize", deid_key=b"k")
    assert len({other.key, clean.key, plain.key}) == 3


def test_config_keys(tmp_path):
    cfg = load_config("tiny", ["data.deidentify=['email', 'phone']", "data.deid_operation=pseudonymize",
                               f"data.deid_key_file={tmp_path / 'k'}"])
    assert cfg.data.deidentify == ["email", "phone"] and cfg.data.deid_operation == "pseudonymize"
    assert load_config("tiny", ["data.deidentify=all"]).data.deidentify == "all"
    assert load_config("tiny").data.deidentify is None
    assert load_config("tiny", ["data.deidentify=['date']", "data.deid_operation=generalize"]).data.deid_operation \
        == "generalize"


@pytest.mark.parametrize("overrides,message", [
    (["data.deidentify=['email', 'emial', 'fone']"], 'unknown type(s) "emial", "fone"'),
    (["data.deidentify=everything"], '"all" or a list'),
    (["data.deidentify=all", "data.deid_operation=blur"], 'data.deid_operation = "blur"'),
    (["data.deidentify=all", "data.deid_operation=pseudonymize"], "needs data.deid_key_file"),
    (["data.deidentify=['date']", "data.deid_operation=perturb"], "needs data.deid_key_file"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("tiny", overrides)


def test_run_corpus_applies_the_config(tmp_path):
    from fastlm.train.data import run_corpus

    data = tmp_path / "d.jsonl"
    _write_corpus(data)
    key = tmp_path / "deid.key"
    key.write_bytes(b"0123456789abcdef")
    base = [f"data.source={data}", "data.vocab_size=300", "model.vocab_size=512"]
    plain = run_corpus(load_config("tiny", base), None)
    pseudo = run_corpus(load_config("tiny", base + ["data.deidentify=['email', 'card']",
                                                    "data.deid_operation=pseudonymize",
                                                    f"data.deid_key_file={key}"]), None)
    assert pseudo.key != plain.key and pseudo.meta["deid"]["operation"] == "pseudonymize"
    text = _all_text(pseudo)
    assert PLANTED[0] not in text and "@example.invalid" in text
    assert "0123456789abcdef" not in json.dumps(pseudo.meta)     # the key never goes into meta.json
    with pytest.raises(FastlmError, match="data.deid_key_file = .*cannot read the key"):
        run_corpus(load_config("tiny", base + ["data.deidentify=['email']", "data.deid_operation=pseudonymize",
                                               f"data.deid_key_file={tmp_path / 'missing.key'}"]), None)
