"""A corpus with planted structure: words of known substitutable classes in fixed frames.

Four classes of eight words; each sentence is a frame whose slots are filled by random members of
the slot's class. Words of one class share every context, so good vectors put them nearest each
other; precision@k measures it (random vectors score about 7/31 ~ 0.23)."""
from __future__ import annotations

import random

CLASSES = {c: [f"{c}{i}" for i in range(8)] for c in ("animal", "color", "city", "tool")}
FRAMES = [("the", "animal", "ran", "to", "city"), ("a", "color", "tool", "is", "here"),
          ("my", "animal", "likes", "color", "things"), ("we", "went", "from", "city", "with", "tool")]


def planted_corpus(sentences: int = 3000, seed: int = 0) -> str:
    rnd = random.Random(seed)
    lines = []
    for _ in range(sentences):
        frame = rnd.choice(FRAMES)
        lines.append(" ".join(rnd.choice(CLASSES[slot]) if slot in CLASSES else slot for slot in frame))
    return "\n".join(lines)


def class_of(word: str) -> str:
    return word.rstrip("0123456789")


def precision_at_k(neighbours, k: int = 5) -> float:
    """neighbours(word, k) -> [(word, score)]: the share of class members among each member's k nearest."""
    hits = total = 0
    for name, members in CLASSES.items():
        for word in members:
            hits += sum(class_of(w) == name for w, _ in neighbours(word, k))
            total += k
    return hits / total
