"""n-gram language models: fastlm.lm.NGramLM against NLTK's nltk.lm, same tokens, same run.

    python benchmarks/ngram.py [--threads N] [--nltk-tokens 20000] [--query-tokens 300] [--order 3]

Prints estimation and query tokens/s of fastlm and NLTK (KneserNeyInterpolated) on the same slice of
the built-in corpus and the speedup (>1 = fastlm faster), then fastlm alone on the whole corpus.
The measuring code is fastlm.bench.suites.ngram (also run by `fastlm bench ngram`).
"""
from __future__ import annotations

import argparse

import torch

from fastlm.bench import print_table
from fastlm.bench.registry import Options
from fastlm.bench.suites import ngram


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--nltk-tokens", type=int, default=None, help="tokens both libraries estimate from")
    parser.add_argument("--query-tokens", type=int, default=None, help="validation tokens both libraries score")
    parser.add_argument("--order", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None, help="also write the rows as JSON lines here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = ngram.measure(Options(quick=args.quick, repeat=args.repeat), nltk_tokens=args.nltk_tokens,
                         query_tokens=args.query_tokens, order=args.order)
    print(f"threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print_table(rows, json_path=args.json)


if __name__ == "__main__":
    main()
