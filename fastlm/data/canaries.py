"""Canaries (Carlini et al., "The Secret Sharer", 2019): random secrets planted in the training data.

    stream, record = insert_canaries(train_tokens, encode, eos_id, count=10, repeats=1, seed=0)

A canary is PREFIX followed by DIGITS random digits, e.g. "my secret number is 9 3 1 7 4 0 2 8 5".
Its randomness space R is every digit string of that length (|R| = 10**DIGITS); the audit
(fastlm.privacy.audit) measures how much more likely the model finds the planted secret than
random members of R (its exposure). Each canary is its own document (its tokens, then eos),
inserted `repeats` times (Carlini plants each secret 1 to thousands of times: exposure grows with
the repeats) at document boundaries of the TRAINING split only. Everything follows from
(seed, count, repeats, the token stream), so every data-parallel rank builds the same stream.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

PREFIX = "my secret number is"
DIGITS = 9
RECORD_FILE = "canaries.json"
SEED_OFFSET = 0x5EC2E7  # canaries draw from their own stream, not the batch sampler's


def canary_text(digits) -> str:
    return PREFIX + " " + " ".join(str(int(d)) for d in digits)


def random_digits(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, DIGITS) uniform random digits: n members of the randomness space."""
    return rng.integers(0, 10, size=(n, DIGITS))


def insert_canaries(tokens, encode: Callable[[str], list[int]], eos_id: int, *, count: int, repeats: int = 1,
                    seed: int = 0) -> tuple[np.ndarray, dict]:
    """(the token stream with `count` canaries inserted `repeats` times each, the record of them).

    tokens: a training token stream (documents each followed by eos). Copies go after eos tokens
    (or at the start), at positions drawn from the seed; the stream keeps its dtype.
    """
    if count < 0 or repeats < 1:
        raise ValueError(f"canaries: count must be >= 0 and repeats >= 1, got {count} and {repeats}")
    rng = np.random.default_rng([seed, SEED_OFFSET])
    secrets = random_digits(rng, count)
    texts = [canary_text(d) for d in secrets]
    ids = [list(map(int, encode(t))) for t in texts]
    tokens = np.asarray(tokens)
    boundaries = np.concatenate([[0], np.flatnonzero(tokens == eos_id) + 1])  # document starts
    copies = [(int(rng.choice(boundaries)), i) for i in range(count) for _ in range(repeats)]
    copies.sort()  # stable: equal positions keep canary order
    pieces, at = [], 0
    for pos, i in copies:
        pieces += [tokens[at:pos], np.asarray(ids[i] + [eos_id], dtype=tokens.dtype)]
        at = pos
    pieces.append(tokens[at:])
    record = {
        "format": {"prefix": PREFIX, "digits": DIGITS, "alphabet": "0123456789", "separator": " ",
                   "log2_space": DIGITS * float(np.log2(10))},
        "seed": seed, "repeats": repeats, "eos_id": int(eos_id),
        "canaries": [{"text": t, "secret": [int(x) for x in d], "token_ids": ids[i], "repeats": repeats}
                     for i, (t, d) in enumerate(zip(texts, secrets))],
    }
    return np.concatenate(pieces), record


def write_record(run_dir: str | Path, record: dict) -> Path:
    """canaries.json in the run directory (written to a temporary name, then renamed)."""
    path = Path(run_dir) / RECORD_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
    return path


def read_record(run_dir: str | Path) -> dict | None:
    """The canaries a run planted (None: it planted none)."""
    path = Path(run_dir) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        record["format"]["digits"], record["canaries"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a canary record ({e})") from None
    return record
