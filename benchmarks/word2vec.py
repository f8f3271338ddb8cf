"""word2vec: fastlm's native skip-gram/CBOW against gensim's Word2Vec, same corpus, settings and threads.

    python benchmarks/word2vec.py [--threads N] [--epochs E] [--repeat R] [--methods skipgram cbow]

Prints words/s of both and the speedup (>1 = fastlm faster), and the neighbour overlap@10 of
fastlm vs gensim next to gensim vs gensim (another seed). The measuring code is
fastlm.bench.suites.word2vec (also run by `fastlm bench word2vec`).
"""
from __future__ import annotations

import argparse

from fastlm.bench import print_table
from fastlm.bench.registry import Options
from fastlm.bench.suites import word2vec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="threads for both (default: all CPUs)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["skipgram", "cbow"], choices=["skipgram", "cbow"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None, help="also write the rows as JSON lines here")
    args = parser.parse_args()
    settings = {"epochs": args.epochs} if args.epochs else None
    rows = word2vec.measure(Options(quick=args.quick, repeat=args.repeat), methods=args.methods,
                            threads=args.threads, settings=settings)
    print_table(rows, json_path=args.json)


if __name__ == "__main__":
    main()
