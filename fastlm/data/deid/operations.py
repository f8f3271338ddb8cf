"""What happens to a detected span.

anonymize     a typed placeholder: <EMAIL>, <PERSON>, ...
pseudonymize  a keyed-HMAC surrogate, the same for the same value across the corpus: a fake name for a
              person or place (from the gazetteers), user_<h>@example.invalid for an email, <TYPE_h> else
generalize    date -> its year, age -> its decade ("aged 34" -> "aged 30-39"), address -> <ADDRESS> (the
              city, a location span, stays); any other type is anonymized
perturb       numeric jitter, keyed and deterministic: a date moves by 1-15 days, an age by 1-3 years
              (either way); any other type is anonymized
suppress      the whole record is dropped when anything is found (deidentify_text returns None)
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re

from fastlm.data.deid.detectors import Span, detect_batch

OPERATIONS = ("anonymize", "pseudonymize", "generalize", "perturb", "suppress")
KEYED = ("pseudonymize", "perturb")  # operations that need an HMAC key


def placeholder(kind: str) -> str:
    return f"<{kind.upper()}>"


def _digest(kind: str, value: str, key: bytes) -> bytes:
    return hmac.new(key, f"{kind}\0{value}".encode(), hashlib.sha256).digest()


def pseudonym(kind: str, value: str, key: bytes) -> str:
    """The same value under the same key always gets the same surrogate; without the key it cannot be linked."""
    d = _digest(kind, value, key)
    h = d.hex()[:12]
    if kind == "email":
        return f"user_{h}@example.invalid"
    if kind in ("person", "location"):
        from fastlm.data.deid.gazetteers import surrogate_lists

        lists = surrogate_lists()
        n = int.from_bytes(d[:8], "big")
        if kind == "location":
            return lists["place"][n % len(lists["place"])]
        first, last = lists["first"], lists["last"]
        return f"{first[n % len(first)]} {last[(n // len(first)) % len(last)]}"
    return f"<{kind.upper()}_{h}>"


# ---------------------------------------------------------------- generalize, perturb

_YEAR = re.compile(r"(?<!\d)(1[0-9]\d\d|20\d\d)(?!\d)")
_NUMBER = re.compile(r"\d+")
_DATE_FORMATS = ("%Y-%m-%d", "%d %B %Y", "%d %b %Y", "%B %d, %Y", "%B %d %Y", "%b %d, %Y", "%b %d %Y")


def _generalize(s: Span) -> str:
    if s.type == "date":
        m = _YEAR.search(s.text)
        return m.group() if m else placeholder("date")
    if s.type == "age":
        n = int(_NUMBER.search(s.text).group())
        lo = n // 10 * 10
        return _NUMBER.sub(f"{lo}-{lo + 9}", s.text, count=1)
    return placeholder(s.type)


def _perturb(s: Span, key: bytes) -> str:
    n = int.from_bytes(_digest(s.type, s.text, key)[:4], "big")
    sign = 1 if n & 1 else -1
    if s.type == "age":
        age = int(_NUMBER.search(s.text).group())
        return _NUMBER.sub(str(max(0, age + sign * (1 + (n >> 1) % 3))), s.text, count=1)
    if s.type == "date":
        for fmt in _DATE_FORMATS:
            try:
                day = dt.datetime.strptime(s.text, fmt)
            except ValueError:
                continue
            return (day + dt.timedelta(days=sign * (1 + (n >> 1) % 15))).strftime(fmt)
    return placeholder(s.type)


# ---------------------------------------------------------------- texts

def check_operation(operation: str, key: bytes | None) -> None:
    from fastlm.train.errors import FastlmError

    if operation not in OPERATIONS:
        raise FastlmError(f"unknown de-identification operation {operation!r}; expected one of {list(OPERATIONS)}")
    if operation in KEYED and not key:
        raise FastlmError(f"{operation} needs a key (--key-file)")


def replacement(s: Span, operation: str, key: bytes | None) -> str:
    if operation == "pseudonymize":
        return pseudonym(s.type, s.text, key)
    if operation == "generalize":
        return _generalize(s)
    if operation == "perturb":
        return _perturb(s, key)
    return placeholder(s.type)


def deidentify_texts(texts: list[str], types="all", operation="anonymize", key: bytes | None = None,
                     counts: dict | None = None) -> list[str | None]:
    """Each text with its spans replaced (None: suppressed); counts (type -> n) is updated in place."""
    check_operation(operation, key)
    outs: list[str | None] = []
    for text, spans in zip(texts, detect_batch(texts, types)):
        if counts is not None:
            for s in spans:
                counts[s.type] = counts.get(s.type, 0) + 1
        if operation == "suppress":
            if spans and counts is not None:
                counts["suppressed_records"] = counts.get("suppressed_records", 0) + 1
            outs.append(None if spans else text)
            continue
        out, last = [], 0
        for s in spans:
            out.append(text[last:s.start])
            out.append(replacement(s, operation, key))
            last = s.end
        out.append(text[last:])
        outs.append("".join(out))
    return outs


def deidentify_text(text: str, types="all", operation="anonymize", key: bytes | None = None,
                    counts=None) -> str | None:
    return deidentify_texts([text], types, operation, key, counts)[0]
