"""Probe sentence pairs in the CrowS-Pairs CSV layout (Nangia et al., 2020).

    pairs = read_pairs(builtin_pairs_path())     # or a user's crows_pairs_anonymized.csv

Columns read: `sent_more` (the more stereotypical sentence), `sent_less`, `stereo_antistereo`
("stereo" or "antistereo"), `bias_type`; an optional `template` (the family of a generated pair).
Other columns (CrowS-Pairs' annotations) are ignored.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastlm.train.errors import FastlmError

REQUIRED = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")
DIRECTIONS = ("stereo", "antistereo")


@dataclass(frozen=True)
class ProbePair:
    sent_more: str           # the more stereotypical sentence
    sent_less: str
    direction: str           # "stereo" | "antistereo"
    bias_type: str           # e.g. gender, age, race-color
    template: str = ""       # the family of templates of a generated pair ("" in CrowS-Pairs)


def builtin_pairs_path() -> Path:
    """The shipped probe set (fastlm/fairness/data/probe_pairs.csv; see data/generate.py)."""
    return Path(str(resources.files("fastlm.fairness.data") / "probe_pairs.csv"))


def read_pairs(path) -> list[ProbePair]:
    """The pairs of a CrowS-Pairs-layout CSV file (FastlmError naming a missing column or a bad row)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise FastlmError(f"{path}: missing column(s) {', '.join(missing)} (expected the CrowS-Pairs "
                                  f"layout: {', '.join(REQUIRED)})")
            pairs = [_pair(row, path, line) for line, row in enumerate(reader, 2)]
    except UnicodeDecodeError as e:
        raise FastlmError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise FastlmError(f"{path}: not a CSV file ({e})") from None
    if not pairs:
        raise FastlmError(f"{path}: no sentence pairs")
    return pairs


def _pair(row: dict, path: Path, line: int) -> ProbePair:
    values = {c: (row.get(c) or "").strip() for c in (*REQUIRED, "template")}
    for c in ("sent_more", "sent_less", "bias_type"):
        if not values[c]:
            raise FastlmError(f"{path}, row {line}: empty {c}")
    if values["stereo_antistereo"] not in DIRECTIONS:
        raise FastlmError(f"{path}, row {line}: stereo_antistereo = {values['stereo_antistereo']!r}: expected "
                          f"stereo or antistereo")
    return ProbePair(values["sent_more"], values["sent_less"], values["stereo_antistereo"], values["bias_type"],
                     values["template"])
