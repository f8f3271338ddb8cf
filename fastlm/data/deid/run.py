"""`fastlm deid INPUT... --out DIR`: de-identify text and JSONL files into DIR, with a report beside them."""
import json
import os
from pathlib import Path

from fastlm.data.deid.detectors import resolve_types
from fastlm.data.deid.operations import check_operation, deidentify_text, deidentify_texts
from fastlm.data.deid.report import write_report

JSONL_SUFFIXES = (".jsonl", ".json")


def deidentify_files(inputs, out_dir, types="all", operation="anonymize", key: bytes | None = None,
                     text_field: str = "text") -> Path:
    """Each input is written under its file name into out_dir (temp name, then rename); returns the report path."""
    from fastlm.train.errors import FastlmError

    types = resolve_types(types)
    check_operation(operation, key)
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.is_file():
            raise FastlmError(f"deid input {str(p)!r} is not a file")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise FastlmError(f"deid inputs share a file name (outputs would collide): {names}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_file = {}
    for p in paths:
        counts: dict[str, int] = {}
        dest = out_dir / p.name
        tmp = dest.with_name(dest.name + ".tmp")
        try:
            with open(p, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
                if p.suffix in JSONL_SUFFIXES:
                    for lines in _jsonl_batches(src, p, text_field):
                        _write_records(lines, dst, text_field, types, operation, key, counts)
                else:  # a text file is one record (suppress leaves it empty)
                    dst.write(deidentify_text(src.read(), types, operation, key, counts) or "")
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        per_file[str(p)] = counts
    return write_report(out_dir, per_file, types, operation)


def _jsonl_batches(src, path, text_field, size: int = 64):
    """Batches of parsed records (the name model runs on a batch at once)."""
    from fastlm.train.errors import FastlmError

    batch = []
    for n, line in enumerate(src, 1):
        if not line.strip():
            continue
        try:
            batch.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise FastlmError(f"{path}:{n}: not a JSON line ({e.msg})") from None
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_records(records, dst, text_field, types, operation, key, counts):
    slots = [i for i, r in enumerate(records) if isinstance(r, dict) and isinstance(r.get(text_field), str)]
    outs = deidentify_texts([records[i][text_field] for i in slots], types, operation, key, counts)
    for i, out in zip(slots, outs):
        records[i] = None if out is None else {**records[i], text_field: out}
    for rec in records:
        if rec is not None:  # None: suppressed
            dst.write(json.dumps(rec, ensure_ascii=False) + "\n")
