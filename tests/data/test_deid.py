"""De-identification: each detector on valid and near-miss examples, exact Unicode offsets, keyed pseudonyms, CLI."""
import json

import pytest

from fastlm.cli import main
from fastlm.data.deid import deidentify_text, detect
from fastlm.data.deid.operations import pseudonym
from fastlm.train.errors import FastlmError

# (type, valid, near miss): the near miss fails the check rule that the valid one passes.
CASES = [
    ("email", "zoë.müller@exemple.fr", "zoë.müller@exemple"),
    ("card", "4111 1111 1111 1111", "4111 1111 1111 1112"),          # Luhn
    ("card", "5500-0000-0000-0004", "5500-0000-0000-0005"),
    ("iban", "GB82 WEST 1234 5698 7654 32", "GB82 WEST 1234 5698 7654 33"),  # mod-97
    ("iban", "DE89370400440532013000", "DE89370400440532013001"),
    ("ssn", "123-45-6789", "666-45-6789"),                             # SSA ranges
    ("ssn", "078-05-1120", "078-00-1120"),
    ("ip", "192.168.1.10", "999.168.1.10"),
    ("ip", "2001:db8::1", "2001:db8:::1"),
    ("phone", "+44 20 7946 0958", "+44 20 7946"),
    ("phone", "(415) 555-2671", "(415) 555-26"),
    ("phone", "794-526-4183 x67", "794-526-418"),                        # unassigned area code, NANP layout
    ("card", "6763 1107 7108", "6763 1107 7109"),                       # 12-digit Maestro
    ("url", "https://example.com/a?b=1", "https//example.com"),
    ("date", "1990-05-17", "1990-5"),
]


@pytest.mark.parametrize("kind,valid,near", CASES)
def test_detector_valid_and_near_miss(kind, valid, near):
    text = f"Contact: {valid} — thanks"
    spans = detect(text, [kind])
    assert [(s.type, s.text) for s in spans] == [(kind, valid)]
    assert detect(f"Contact: {near} — thanks", [kind]) == []


def test_offsets_exact_on_unicode():
    values = ["naïve.ß@exämple.de", "+33 1 42 68 53 00", "4111111111111111", "10.0.0.1"]
    text = "日本語の文章 " + " ✓ 😀 ".join(values) + " ñ"
    spans = detect(text)
    assert [text[s.start:s.end] for s in spans] == values
    assert [s.start for s in spans] == [text.index(v) for v in values]


def test_anonymize_placeholders():
    out = deidentify_text("mail a@b.org, card 4111111111111111.", ["email", "card"])
    assert out == "mail <EMAIL>, card <CARD>."


def test_pseudonyms_consistent_and_keyed():
    text = "x@y.com wrote to z@y.com; x@y.com again"
    a = deidentify_text(text, operation="pseudonymize", key=b"k1")
    b = deidentify_text(text, operation="pseudonymize", key=b"k2")
    p1, p2 = pseudonym("email", "x@y.com", b"k1"), pseudonym("email", "z@y.com", b"k1")
    assert a.count(p1) == 2 and p2 in a and p1 != p2
    assert "x@y.com" not in a and a != b
    assert deidentify_text(text, operation="pseudonymize", key=b"k1") == a
    with pytest.raises(FastlmError, match="key"):
        deidentify_text(text, operation="pseudonymize")


def test_overlaps_resolved_once():
    # A card number is also a digit run a phone matcher might take: one span, the card.
    assert [s.type for s in detect("pay 4111 1111 1111 1111 now")] == ["card"]


def test_bad_types():
    with pytest.raises(FastlmError, match="unknown de-identification type"):
        detect("x", ["emial"])


def test_cli_files_and_report(tmp_path, capsys):
    planted = ["ann@corp.example.com", "4111 1111 1111 1111", "GB82 WEST 1234 5698 7654 32", "+1 415 555 2671"]
    txt = tmp_path / "a.txt"
    txt.write_text(f"Ann ({planted[0]}) paid with {planted[1]}.\n", encoding="utf-8")
    jl = tmp_path / "b.jsonl"
    jl.write_text(json.dumps({"text": f"IBAN {planted[2]}, call {planted[3]}", "id": 7}) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["deid", str(txt), str(jl), "--out", str(out)]) == 0
    written = (out / "a.txt").read_text() + (out / "b.jsonl").read_text()
    assert not any(v in written for v in planted)
    assert json.loads((out / "b.jsonl").read_text())["id"] == 7
    report = json.loads((out / "deid_report.json").read_text())
    assert report["files"][str(txt)] == {"email": 1, "card": 1, "person": 1}   # Ann: the name model
    assert report["totals"] == {"email": 1, "card": 1, "iban": 1, "phone": 1, "person": 1}
    assert not any(v in json.dumps(report) for v in planted)     # counts, never values
    assert not list(out.glob("*.tmp"))


def test_cli_bad_input(tmp_path, capsys):
    assert main(["deid", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")]) != 0
    assert "is not a file" in capsys.readouterr().err
