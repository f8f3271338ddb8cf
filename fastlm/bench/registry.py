"""The benchmark suites `fastlm bench` knows, by name, and what each one reports.

A suite is a module in fastlm/bench/suites/ with a `SUITE = Suite(...)`. Its `run(options)` returns
rows (dicts): every row names its `case` and carries a `speedup` (baseline time / fastlm time, so
>1 means fastlm is faster) or, for memory suites, a `memory_ratio` (fastlm / baseline, <1 is better).
Modules are imported only when their suite runs: a suite may need optional packages.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# name -> module under fastlm.bench.suites (order = the order `fastlm bench` runs them in)
SUITE_MODULES = {
    "norms": "norms",
    "attention": "attention",
    "attention_memory": "attention_memory",
    "matmul": "matmul",
    "fused_ops": "fused_ops",
    "data_parallel": "data_parallel",
    "train_throughput": "train_throughput",
    "hf_patched": "hf_patched",
    "ngram": "ngram",
    "hmm": "hmm",
    "word2vec": "word2vec",
    "lm_history": "lm_history",
    "recurrent": "recurrent",
    "dp_sgd": "dp_sgd",
}


@dataclass
class Options:
    device: str = "cpu"
    quick: bool = False       # fewer shapes and repeats (a smoke run in a few minutes)
    repeat: int | None = None  # timed runs per measurement (the suite's default when None)

    def repeats(self, default: int) -> int:
        return self.repeat or (max(2, default // 3) if self.quick else default)


@dataclass
class Suite:
    name: str
    baseline: str                       # what fastlm is measured against, in words
    run: Callable[[Options], list[dict]]
    devices: tuple[str, ...] = ("cpu", "cuda")
    ratio: str = "speedup"              # "speedup" (higher is better) or "memory_ratio" (lower is better)
    plot_x: str | None = None           # a line plot of `plot_y` against this column instead of bars per case
    plot_y: list[str] = field(default_factory=list)
    plot: Callable[[list[dict], Path], Path] | None = None  # a suite's own figure instead of the above


def suite_names() -> list[str]:
    return list(SUITE_MODULES)


def get_suite(name: str) -> Suite:
    if name not in SUITE_MODULES:
        raise KeyError(f"unknown benchmark {name!r} (known: {', '.join(SUITE_MODULES)})")
    module = importlib.import_module(f"fastlm.bench.suites.{SUITE_MODULES[name]}")
    return module.SUITE
