"""Counterfactual augmentation against a planted gender bias, measured by `fastlm fairness probe`.

    OMP_NUM_THREADS=1 python benchmarks/fairness_probe.py                  # 3 seeds, without and with augmentation
    python benchmarks/fairness_probe.py --seeds 0 --steps 200 --out runs/fairness_probe

For each seed: a corpus with a planted bias (fastlm.fairness.planted: 4000 two-sentence documents
about people with WinoBias' occupations, 90% of them of the occupation's stereotyped gender), a
smaller-than-tiny LLaMA-style model (2 layers, d_model 128, 0.62M parameters) trained on it without
and with data.counterfactual = "gender", both probed on the built-in probe set. Both runs of a seed
use the same tokenizer (the first run's), so their validation losses (on the same held-out biased
documents, which augmentation never touches) compare: the accuracy cost. Baseline: the runs
without augmentation, same seeds, same invocation.

Prints a table (stereotype preference on the gender pairs and per template family, with 95% Wilson
intervals per run and t intervals over seeds) and writes OUT/results.json.

Measured (2-core shared CPU under other load, OMP_NUM_THREADS=1, 400 steps of 16 x 64 tokens; 451 s
wall for the 6 runs and their probes). Stereotype preference (share of pairs whose stereotypical
sentence is more likely), per seed 0 1 2 and the mean with its 95% t interval over the seeds:
    gender pairs (880)   no augmentation  55.9 53.1 54.8  ->  54.6% [51.0, 58.1]
                         counterfactual   49.4 50.7 50.6  ->  50.2% [48.5, 51.9]
    occupation-pronoun   no augmentation  72.5 65.0 70.9  ->  69.5%;  counterfactual 47.2 49.7 51.9 -> 49.6%
    occupation-noun      no augmentation  49.6 60.0 57.9  ->  55.8%;  counterfactual 49.6 52.1 52.5 -> 51.4%
    winobias             no augmentation  44.1 35.9 36.2  ->  38.8%;  counterfactual 51.6 50.6 47.8 -> 50.0%
    validation loss      no augmentation  0.7241 0.7139 0.7064 -> 0.7148 [0.6927, 0.7369]
                         counterfactual   0.7283 0.7653 0.7161 -> 0.7366 [0.6729, 0.8003]
Per run, a 95% Wilson interval of the gender rate is about +-3.3 points (880 pairs). The model learns
which pronoun follows an occupation (the pronoun family); on the WinoBias pairs (two occupations, the
pronoun refers to the first) it follows the nearer, second occupation, so it reads as anti-stereotypical
there. Augmentation brings every family to 50% within its interval; its accuracy cost is +0.02 nats of
validation loss on held-out documents of the biased distribution (within the seed-to-seed spread).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

MODEL = ["model.family=llama", "model.n_layer=2", "model.n_head=4", "model.n_kv_head=2", "model.d_model=128",
         "model.dropout=0.0"]
DATA = ["data.vocab_size=512", "data.seq_len=64", "data.val_fraction=0.1"]
TRAIN = ["train.global_batch_size=16", "train.micro_batch_size=16", "train.lr=3e-3", "train.warmup_steps=20",
         "train.min_lr=3e-4", "train.precision=fp32", "train.log_every=50", "train.eval_every=0",
         "train.eval_batches=8", "checkpoint.every=0"]
FAMILIES = ("occupation-pronoun", "occupation-noun", "winobias")


def run_one(out: Path, corpus: Path, steps: int, seed: int, augment: bool, tokenizer: Path | None) -> dict:
    from fastlm.fairness import probe_run
    from fastlm.train import Trainer, load_config

    run_dir = out / f"{'cda' if augment else 'plain'}-seed{seed}"
    overrides = [*MODEL, *DATA, *TRAIN, f"data.source={corpus}", f"train.steps={steps}", f"train.seed={seed}"]
    if augment:
        overrides.append("data.counterfactual=gender")
    if tokenizer is not None:
        overrides.append(f"data.tokenizer={tokenizer}")
    t0 = time.perf_counter()
    trained = Trainer(load_config("tiny", overrides), out_dir=str(run_dir), show_progress=False).fit()
    probe = probe_run(run_dir)
    gender = probe["by_bias_type"]["gender"]
    return {"seed": seed, "augment": augment, "run_dir": str(run_dir), "val_loss": trained["val_loss"],
            "gender": _short(gender), "overall": _short(probe["overall"]),
            "families": {f: _short(probe["by_template"][f]) for f in FAMILIES},
            "seconds": round(time.perf_counter() - t0, 1)}


def _short(s: dict) -> dict:
    return {"rate": s["rate"], "ci95": s["ci95"], "pairs": s["pairs"]}


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% Student-t interval of the mean over seeds."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def summarize(runs: list[dict]) -> dict:
    out = {}
    for augment in (False, True):
        rows = [r for r in runs if r["augment"] == augment]
        if not rows:
            continue
        key = "counterfactual" if augment else "plain"
        out[key] = {"gender": t_interval([r["gender"]["rate"] for r in rows]),
                    "val_loss": t_interval([r["val_loss"] for r in rows]),
                    **{f: t_interval([r["families"][f]["rate"] for r in rows]) for f in FAMILIES}}
    return out


def format_table(runs: list[dict], summary: dict) -> str:
    head = f"{'run':16} {'gender pairs [95% Wilson]':>27} {'pronoun':>8} {'noun':>6} {'winobias':>9} {'val loss':>9}"
    lines = [head]
    for r in runs:
        g = r["gender"]
        lines.append(f"{'cda' if r['augment'] else 'plain':5} seed {r['seed']:<5} {100 * g['rate']:9.1f}% "
                     f"[{100 * g['ci95'][0]:5.1f}, {100 * g['ci95'][1]:5.1f}]% "
                     + " ".join(f"{100 * r['families'][f]['rate']:{w}.1f}%" for f, w in zip(FAMILIES, (7, 5, 8)))
                     + f" {r['val_loss']:9.4f}")
    lines.append("mean over seeds [95% t interval]:")
    for key, s in summary.items():
        m, lo, hi = s["gender"]
        fam = " ".join(f"{f.split('-')[-1]} {100 * s[f][0]:.1f}%" for f in FAMILIES)
        v = s["val_loss"]
        lines.append(f"  {key:15} gender {100 * m:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]  {fam}  "
                     f"val loss {v[0]:.4f} [{v[1]:.4f}, {v[2]:.4f}]")
    lines.append("(stereotype preference: share of pairs whose stereotypical sentence is more likely; 50% = none)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/fairness_probe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--documents", type=int, default=4000)
    parser.add_argument("--bias", type=float, default=0.9, help="share of documents with the stereotyped gender")
    args = parser.parse_args(argv)
    from fastlm.fairness.planted import write_planted_corpus

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FASTLM_CACHE", str(out / "cache"))  # prepared corpora: not the user's cache
    t0 = time.perf_counter()
    runs = []
    for seed in args.seeds:
        corpus = write_planted_corpus(out / f"planted-seed{seed}.jsonl", args.documents, args.bias, seed)
        plain = run_one(out, corpus, args.steps, seed, False, None)
        runs.append(plain)
        runs.append(run_one(out, corpus, args.steps, seed, True, Path(plain["run_dir"]) / "tokenizer.json"))
        print(f"seed {seed}: {runs[-2]['seconds']} s + {runs[-1]['seconds']} s", file=sys.stderr, flush=True)
    summary = summarize(runs)
    print(format_table(runs, summary))
    result = {"runs": runs, "summary": summary, "steps": args.steps, "documents": args.documents, "bias": args.bias,
              "model": MODEL, "data": DATA, "train": TRAIN, "seconds": round(time.perf_counter() - t0, 1)}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out / "results.json")
    print(f"results: {out / 'results.json'} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
