"""generalize, perturb, suppress (and person pseudonyms) in the library, the CLI and prepare_corpus."""
import datetime as dt
import json
import re

import pytest

from fastlm.cli import main
from fastlm.data import prepare_corpus
from fastlm.data.deid import deidentify_text
from fastlm.data.deid.operations import deidentify_texts
from fastlm.train.errors import FastlmError

TYPES = ["date", "age", "address", "email"]


def test_generalize():
    text = "Born 1990-05-17 (aged 34), seen on March 3, 2021 at 221B Baker Street, London; mail a@b.org"
    out = deidentify_text(text, TYPES, "generalize")
    assert out == "Born 1990 (aged 30-39), seen on 2021 at <ADDRESS>, London; mail <EMAIL>"


def test_perturb_is_keyed_deterministic_and_bounded():
    dates = [f"2020-0{m}-1{d}" for m in range(1, 10) for d in range(9)]
    text = "; ".join(f"visit {d}, a 40-year-old" for d in dates)
    a = deidentify_text(text, ["date", "age"], "perturb", key=b"k1")
    assert a == deidentify_text(text, ["date", "age"], "perturb", key=b"k1")
    assert a != deidentify_text(text, ["date", "age"], "perturb", key=b"k2")
    moved = re.findall(r"visit (\d{4}-\d{2}-\d{2}), a (\d+)-year-old", a)
    assert len(moved) == len(dates)
    for (new, age), old in zip(moved, dates):
        shift = abs((dt.date.fromisoformat(new) - dt.date.fromisoformat(old)).days)
        assert 1 <= shift <= 15 and 1 <= abs(int(age) - 40) <= 3
    with pytest.raises(FastlmError, match="perturb needs a key"):
        deidentify_text(text, ["date"], "perturb")


def test_suppress_drops_records_with_findings():
    counts = {}
    outs = deidentify_texts(["nothing here", "mail a@b.org", "born 1990-05-17"], TYPES, "suppress", counts=counts)
    assert outs == ["nothing here", None, None]
    assert counts == {"email": 1, "date": 1, "suppressed_records": 2}


def test_person_pseudonyms_are_fake_names():
    pytest.importorskip("faker")
    text = "Maria Rossi met John Smith. Later Maria Rossi left."
    out = deidentify_text(text, ["person"], "pseudonymize", key=b"k")
    assert "Rossi" not in out and "Smith" not in out
    first, second, third = re.fullmatch(r"(.+) met (.+)\. Later (.+) left\.", out).groups()
    assert first == third != second


def test_cli_suppress_and_generalize(tmp_path):
    data = tmp_path / "d.jsonl"
    records = [{"text": "clean text", "id": 1}, {"text": "born 1990-05-17", "id": 2}, {"text": "a@b.org", "id": 3}]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["deid", str(data), "--out", str(tmp_path / "s"), "--types", "date,email",
                 "--operation", "suppress"]) == 0
    assert [json.loads(x)["id"] for x in (tmp_path / "s" / "d.jsonl").read_text().splitlines()] == [1]
    assert json.loads((tmp_path / "s" / "deid_report.json").read_text())["totals"]["suppressed_records"] == 2
    assert main(["deid", str(data), "--out", str(tmp_path / "g"), "--types", "date,email",
                 "--operation", "generalize"]) == 0
    assert [json.loads(x)["text"] for x in (tmp_path / "g" / "d.jsonl").read_text().splitlines()] == \
        ["clean text", "born 1990", "<EMAIL>"]


def test_corpus_suppress_and_generalize(tmp_path):
    data = tmp_path / "d.jsonl"
    filler = "the quick brown fox jumps over the lazy dog. " * 4
    with open(data, "w") as f:
        for i in range(30):
            extra = f"born 19{50 + i}-05-17" if i % 3 == 0 else "no dates"
            f.write(json.dumps({"text": f"{i} {filler} {extra}"}) + "\n")
    kw = {"vocab_size": 300, "cache_dir": tmp_path / "c", "show_progress": False, "deidentify": ["date"]}
    sup = prepare_corpus(str(data), deid_operation="suppress", **kw)
    assert sup.meta["deid"]["documents"] == 20 and sup.meta["train_documents"] + sup.meta["val_documents"] == 20
    gen = prepare_corpus(str(data), deid_operation="generalize", **kw)
    text = (gen.decode(gen.train_tokens) + gen.decode(gen.val_tokens)).replace(" ", "")
    assert "05-17" not in text and "born1950" in text
