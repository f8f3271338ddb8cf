"""The history of language models in one table: n-gram (orders 2-5), HMM, maximum entropy, the recurrent
networks (LSTM, GRU) and the
`tiny` GPT, each trained on the built-in corpus with the same tokenizer and scored on the same
validation tokens; validation perplexity against training time.

Every model is a preset run through the same `Trainer` (so the same data, tokenizer and
validation windows by construction). The baseline is the `tiny` GPT of the same run:
`ppl_ratio` = a model's validation perplexity / the GPT's (below 1: better than the GPT).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from fastlm.bench.registry import Options, Suite

# (case, preset, overrides); quick runs keep the cheap end of each family
MODELS = [
    ("2-gram", "ngram", ["model.order=2"]),
    ("3-gram", "ngram", ["model.order=3"]),
    ("4-gram", "ngram", ["model.order=4"]),
    ("5-gram", "ngram", ["model.order=5"]),
    ("hmm-64", "hmm", []),
    ("maxent-3", "maxent", []),
    ("lstm-tiny", "lstm-tiny", []),
    ("gru-tiny", "gru-tiny", []),
    ("gpt-tiny", "tiny", []),
]
QUICK_OVERRIDES = {"hmm": ["model.iterations=5"], "maxent": ["train.steps=100"],
                   "tiny": ["train.steps=100"], "lstm-tiny": ["train.steps=50"], "gru-tiny": ["train.steps=50"]}


def train_one(preset: str, overrides: list[str], out_dir: Path) -> dict:
    """Train one preset quietly; its validation loss/perplexity and wall-clock seconds."""
    from fastlm.train import Trainer, load_config

    config = load_config(preset, [*overrides, "checkpoint.every=0"])
    start = time.perf_counter()
    result = Trainer(config, out_dir=out_dir, show_progress=False).fit()
    return {"val_loss": result["val_loss"], "val_ppl": result["val_ppl"],
            "train_seconds": time.perf_counter() - start, "family": config.model.family}


def measure(options: Options, models=None, work_dir: str | None = None) -> list[dict]:
    from fastlm.train import load_config
    from fastlm.train.data import run_corpus

    run_corpus(load_config("tiny"), None)  # tokenize once, outside every model's timing (the corpus is cached)
    rows = []
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for case, preset, overrides in models or MODELS:
            extra = QUICK_OVERRIDES.get(preset, []) if options.quick else []
            r = train_one(preset, [*overrides, *extra], Path(tmp) / case)
            rows.append({"case": case, **r})
    gpt = next((r for r in rows if r["family"] in ("llama", "gpt2")), None)
    for r in rows:
        r["ppl_ratio"] = r["val_ppl"] / gpt["val_ppl"] if gpt else None
    return rows


def plot_history(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["train_seconds"], r["val_ppl"], s=40)
        ax.annotate(r["case"], (r["train_seconds"], r["val_ppl"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training time (s, one process)")
    ax.set_ylabel("validation perplexity (same tokens)")
    ax.set_title("language models on the built-in corpus")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


SUITE = Suite(name="lm_history", baseline="the tiny GPT trained in the same run (perplexity ratio)", run=measure,
              devices=("cpu",), ratio="ppl_ratio", plot=plot_history)
