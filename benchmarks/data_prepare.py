"""Corpus preparation throughput (MB/s of text) with 1 and 2 `data.workers`, same run.

    python benchmarks/data_prepare.py [--copies N] [--workers 1 2] [--repeat R]

The corpus: the embedded one (pydoc topics + standard-library sources, ~2.5 MB) written N times
into text files (each copy's documents get a copy number, so no two are equal). Two timings per
worker count, each into a fresh cache: `tokenize` with a tokenizer given (reading, the split, the
token files: what the workers share) and `prepare` with the BPE tokenizer trained too (training is
the tokenizers library's own, threaded, and the same for any worker count). Checks that every
worker count wrote byte-identical token files. Best of --repeat runs, interleaved.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

from fastlm.bench import print_table
from fastlm.data import prepare_corpus
from fastlm.data.sources import resolve_source


def write_corpus(directory: Path, copies: int) -> int:
    docs = list(resolve_source("builtin").documents())
    size = 0
    for c in range(copies):
        text = "\n\n".join(f"# copy {c}\n{doc}" for doc in docs)
        (directory / f"part{c:03d}.txt").write_text(text, encoding="utf-8")
        size += len(text.encode("utf-8"))
    return size


def _digest(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(directory.glob("*.bin")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def _time_prepare(source: str, workers: int, tokenizer: str | None, scratch: Path) -> tuple[float, str]:
    cache = Path(tempfile.mkdtemp(dir=scratch))
    start = time.perf_counter()
    corpus = prepare_corpus(source, vocab_size=4096, tokenizer_path=tokenizer, cache_dir=cache, show_progress=False,
                            workers=workers)
    return time.perf_counter() - start, _digest(corpus.directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        (scratch / "text").mkdir()
        size = write_corpus(scratch / "text", args.copies)
        source = str(scratch / "text")
        tokenizer = prepare_corpus("builtin", vocab_size=4096, cache_dir=scratch / "tok",
                                   show_progress=False).tokenizer_path
        best: dict[tuple[str, int], float] = {}
        digests = set()
        for _ in range(args.repeat):
            for workers in args.workers:
                for mode, tok in (("tokenize", str(tokenizer)), ("prepare", None)):
                    seconds, digest = _time_prepare(source, workers, tok, scratch)
                    best[mode, workers] = min(seconds, best.get((mode, workers), float("inf")))
                    if mode == "tokenize":
                        digests.add(digest)
        rows = []
        for mode in ("tokenize", "prepare"):
            base = best[mode, args.workers[0]]
            for workers in args.workers:
                seconds = best[mode, workers]
                rows.append({"case": mode, "workers": workers, "MB": size / 1e6, "seconds": seconds,
                             "MB/s": size / 1e6 / seconds, "speedup": base / seconds})
        print(f"{size / 1e6:.1f} MB of text, {os.cpu_count()} CPUs, best of {args.repeat}")
        print_table(rows)
        print("token files identical across worker counts:", len(digests) == 1)


if __name__ == "__main__":
    main()
