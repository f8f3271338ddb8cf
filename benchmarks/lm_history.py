"""The history of language models in one table: n-gram (orders 2-5), HMM, maximum entropy and the
tiny GPT on the built-in corpus, same tokenizer, same validation tokens.

    python benchmarks/lm_history.py [--quick] [--threads N] [--out DIR]

Writes DIR/lm_history.md (the table) and DIR/lm_history.png (validation perplexity against
training time). The measuring code is fastlm.bench.suites.lm_history (`fastlm bench lm_history`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fastlm.bench.registry import Options
from fastlm.bench.suites import lm_history


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | val loss | val ppl | ppl / GPT's | training time (s) |", "|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['ppl_ratio']:.2f}" if r.get("ppl_ratio") is not None else "-"
        lines.append(f"| {r['case']} | {r['val_loss']:.4f} | {r['val_ppl']:.1f} | {ratio} | {r['train_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 EM iterations, 50-100 gradient steps")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = lm_history.measure(Options(quick=args.quick))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    (out / "lm_history.md").write_text(f"threads: {torch.get_num_threads()}\n\n{table}")
    lm_history.plot_history(rows, out / "lm_history.png")
    print(table)
    print(f"wrote {out / 'lm_history.md'} and {out / 'lm_history.png'}")


if __name__ == "__main__":
    main()
