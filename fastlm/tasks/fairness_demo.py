"""A classification demo with a planted group correlation, built from the langid demo (offline).

    paths = planted_group_dataset(out_dir)   # {"train": Path, "validation": Path}: text, label, group
    [task] train = "demo:langid-groups"      # the same from a task config (size 3000 unless ":SIZE")

Each langid message gets a binary label (its language family: "romance" for fr, es, it,
"germanic" for de, nl, sv), a group ("a" or "b") that agrees with the label with probability
`correlation` (group a mostly romance, b mostly germanic), and a token that reveals the group
at the start of its text ("[a] ..."). Only the first `words` words of the message are kept, so the
text alone leaves some examples ambiguous and a classifier gains from the group token: its errors
then depend on the group (an equalized-odds gap), which adversarial debiasing should shrink.
reveal=False leaves the token out (same labels and groups): a classifier blind to the group, the
reference for what debiasing can reach.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

from fastlm.tasks.datasets import read_records
from fastlm.tasks.demo import demo_dataset

FAMILY = {"fr": "romance", "es": "romance", "it": "romance", "de": "germanic", "nl": "germanic", "sv": "germanic"}


def planted_records(records: list[dict], seed: int, correlation: float = 0.8, words: int = 2,
                    reveal: bool = True) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for r in records:
        label = FAMILY[r["label"]]
        usual = "a" if label == "romance" else "b"
        group = usual if rng.random() < correlation else ("b" if usual == "a" else "a")
        text = " ".join(r["text"].split()[:words])
        out.append({"text": f"[{group}] {text}" if reveal else text, "label": label, "group": group})
    return out


def planted_group_dataset(out_dir: str | Path, size: int = 3000, seed: int = 0, correlation: float = 0.8,
                          words: int = 2, cache_dir: str | Path | None = None, reveal: bool = True) -> dict[str, Path]:
    """Write (once) train.jsonl and validation.jsonl of the planted-correlation demo under out_dir
    (from the langid demo of the same size and seed, in cache_dir: default the tasks cache)."""
    out_dir = Path(out_dir) / (f"langid-groups-{size}-{seed}-{correlation}-{words}" + ("" if reveal else "-blind"))
    paths = {"train": out_dir / "train.jsonl", "validation": out_dir / "validation.jsonl"}
    if all(p.is_file() for p in paths.values()):
        return paths
    source = demo_dataset("langid", cache_dir, size=size, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, (split, path) in enumerate(paths.items()):
        rows = planted_records([r.fields for r in read_records(source[split])], seed * 2 + i, correlation, words,
                               reveal)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, path)
    return paths
