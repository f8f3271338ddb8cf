"""Timing helpers: warm-up, repeated runs, median, and side-by-side ratios."""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch


@dataclass
class Measurement:
    name: str
    seconds: float  # median over repeats
    runs: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def _sync(device: str | None) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_callable(name: str, fn: Callable[[], object], *, warmup: int = 3, repeat: int = 10, min_time: float = 0.0,
                  device: str | None = None) -> Measurement:
    """Median wall time of fn() after `warmup` calls; repeats until `repeat` runs and `min_time` seconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    runs: list[float] = []
    start_all = time.perf_counter()
    while len(runs) < repeat or time.perf_counter() - start_all < min_time:
        start = time.perf_counter()
        fn()
        _sync(device)
        runs.append(time.perf_counter() - start)
    return Measurement(name, statistics.median(runs), runs)


def compare(candidate: Measurement, baseline: Measurement) -> float:
    """Speedup of candidate over baseline (>1 means the candidate is faster)."""
    return baseline.seconds / candidate.seconds


def print_table(rows: list[dict], columns: list[str] | None = None, json_path: str | None = None) -> None:
    """Prints rows as an aligned table (and optionally writes them as JSON lines)."""
    if not rows:
        return
    columns = columns or list(rows[0])
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))
    if json_path:
        with open(json_path, "w") as f:
            for row in rows:
                f.write(json.dumps({k: (asdict(v) if isinstance(v, Measurement) else v) for k, v in row.items()}) + "\n")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return "" if value is None else str(value)
