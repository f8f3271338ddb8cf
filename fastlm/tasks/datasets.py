"""Reading task datasets (JSONL or CSV records) with errors that name the file and line.

A malformed dataset stops the run before training: every record is checked when it is read.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fastlm.train.errors import FastlmError


class DatasetError(FastlmError, ValueError):
    """A missing, unreadable or malformed dataset file; the message names file and line/record."""


@dataclass
class Record:
    fields: dict[str, Any]
    where: str  # "file:line", for error messages about this record


def read_records(path: str | Path, required: tuple[str, ...] = ()) -> list[Record]:
    """The records of a .jsonl/.json-lines or .csv/.tsv file; each must have the required fields."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        records = _read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix in (".jsonl", ".ndjson"):
        records = _read_jsonl(path)
    else:
        raise DatasetError(f"{path}: unknown dataset format {suffix or '(no extension)'!r} "
                           f"(expected .jsonl, .csv or .tsv)")
    if not records:
        raise DatasetError(f"{path}: no records")
    for r in records:
        for name in required:
            if name not in r.fields:
                raise DatasetError(f"{r.where}: missing field {name!r} (has: {', '.join(map(str, r.fields)) or 'none'})")
    return records


def _read_jsonl(path: Path) -> list[Record]:
    records = []
    with open(path, encoding="utf-8") as f:
        try:
            lines = list(f)
        except UnicodeDecodeError as e:
            raise DatasetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{number}: invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(value, dict):
            raise DatasetError(f"{path}:{number}: expected a JSON object, got {type(value).__name__}")
        records.append(Record(value, f"{path}:{number}"))
    return records


def _read_csv(path: Path, delimiter: str) -> list[Record]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            records = []
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row:
                    raise DatasetError(f"{where}: more values than the {len(reader.fieldnames)} header columns")
                if any(v is None for v in row.values()):
                    raise DatasetError(f"{where}: fewer values than the {len(reader.fieldnames)} header columns")
                records.append(Record(dict(row), where))
            return records
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DatasetError(f"{path}: malformed CSV: {e}") from None


def text_value(record: Record, field: str) -> str:
    """A non-empty string field."""
    value = record.fields[field]
    if not isinstance(value, str):
        raise DatasetError(f"{record.where}: field {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DatasetError(f"{record.where}: field {field!r} is empty")
    return value


def label_value(record: Record, field: str, known: Callable[[str], bool] | None = None,
                known_text: str = "") -> str:
    """A class label (a string, or an integer written as its decimal string)."""
    value = record.fields[field]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DatasetError(f"{record.where}: label field {field!r} must be a string or an integer, "
                           f"got {json.dumps(value)}")
    label = str(value)
    if not label.strip():
        raise DatasetError(f"{record.where}: label field {field!r} is empty")
    if known is not None and not known(label):
        raise DatasetError(f"{record.where}: unknown label {label!r} ({known_text})")
    return label
