"""The ARPA text format of backoff n-gram models (what KenLM, SRILM and IRSTLM read and write).

    \\data\\
    ngram 1=<count>
    ...
    \\1-grams:
    <log10 p>  <w1>  [<log10 backoff>]
    ...
    \\end\\

Probabilities and backoffs are log10 in the file, natural logs in the model. Fields may be
separated by tabs or spaces. fastlm's words are decimal ids plus <s>, </s> and <unk>.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from fastlm.lm import ngram_keys

LN10 = math.log(10.0)
SPECIALS = ("</s>", "<s>", "<unk>")  # internal ids V, V+1, V+2
_COUNT = re.compile(r"^ngram\s+(\d+)\s*=\s*(\d+)$")
_SECTION = re.compile(r"^\\(\d+)-grams:$")


def _word_strings(model) -> list[str]:
    words = model.words if model.words is not None else [str(i) for i in range(model.vocab_size)]
    return list(words) + list(SPECIALS)


def write(model, path: Path) -> None:
    strings = _word_strings(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write("\\data\\\n")
            for n, (keys, _, _) in enumerate(model.tables, start=1):
                f.write(f"ngram {n}={keys.shape[0]}\n")
            for n, (keys, log_prob, log_backoff) in enumerate(model.tables, start=1):
                f.write(f"\n\\{n}-grams:\n")
                ids = ngram_keys.unpack(keys.numpy(), n, model.bits)
                names = [" ".join(strings[i] for i in row) for row in ids.tolist()]
                probs = (log_prob.numpy() / LN10).tolist()
                if n < model.order:
                    backoffs = (log_backoff.numpy() / LN10).tolist()
                    f.writelines(f"{p:.10g}\t{w}\t{b:.10g}\n" for p, w, b in zip(probs, names, backoffs))
                else:
                    f.writelines(f"{p:.10g}\t{w}\n" for p, w in zip(probs, names))
            f.write("\n\\end\\\n")
        os.replace(tmp, path)
    except BaseException:
        with __import__("contextlib").suppress(OSError):
            os.unlink(tmp)
        raise


class _Lines:
    """Numbered, stripped lines with errors that name the file and line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, encoding="utf-8", errors="replace") as f:
            self.lines = f.read().split("\n")
        if self.lines and self.lines[-1] == "":  # the final newline ends the last line
            self.lines.pop()
        self.i = 0

    def error(self, message: str, line: int | None = None) -> ValueError:
        return ValueError(f"{self.path}: line {line if line is not None else self.i}: {message}")

    def next(self) -> str | None:
        """The next line (stripped), or None at the end of the file; self.i is its 1-based number."""
        if self.i >= len(self.lines):
            self.i = len(self.lines) + 1  # errors point just past the last line
            return None
        self.i += 1
        return self.lines[self.i - 1].strip()

    def next_nonblank(self) -> str | None:
        line = self.next()
        while line == "":
            line = self.next()
        return line


def _shown(line: str | None) -> str:
    return "the end of the file" if line is None else repr(line)


def _number(text: str, lines: _Lines, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise lines.error(f"{what} {text!r} is not a number") from None


def _read_section(lines: _Lines, n: int, count: int) -> tuple[list[list[str]], list[float], list[float], list[int]]:
    header = lines.next_nonblank()
    if header != f"\\{n}-grams:":
        raise lines.error(f"expected '\\{n}-grams:', got {_shown(header)}")
    grams, probs, backoffs, numbers = [], [], [], []
    for _ in range(count):
        line = lines.next()
        if line is None or line == "" or line.startswith("\\"):
            raise lines.error(f"the {n}-gram section has fewer entries than the {count} its header announces")
        fields = line.split()
        if len(fields) not in (n + 1, n + 2):
            raise lines.error(f"a {n}-gram line needs a log10 probability, {n} words and an optional backoff, "
                              f"got {len(fields)} fields")
        probs.append(_number(fields[0], lines, "probability"))
        grams.append(fields[1:n + 1])
        backoffs.append(_number(fields[n + 1], lines, "backoff") if len(fields) == n + 2 else 0.0)
        numbers.append(lines.i)
    after = lines.next()
    if after not in ("", None) and not after.startswith("\\"):
        raise lines.error(f"the {n}-gram section has more entries than the {count} its header announces")
    if after is not None and after.startswith("\\"):
        lines.i -= 1  # let the caller read the next section header
    return grams, probs, backoffs, numbers


def _vocabulary(unigrams: list[list[str]], lines: _Lines, numbers: list[int]) -> tuple[int, list[str] | None, dict]:
    """(vocab_size, words or None, string -> internal id) from the unigram section."""
    plain = [g[0] for g in unigrams if g[0] not in SPECIALS]
    decimal = all(w.isdigit() and str(int(w)) == w for w in plain)
    words = None if decimal else plain
    V = (max((int(w) for w in plain), default=-1) + 1) if decimal else len(plain)
    index = {w: int(w) for w in plain} if decimal else {w: i for i, w in enumerate(plain)}
    if not decimal and len(index) != len(plain):
        seen = set()
        for g, line in zip(unigrams, numbers):
            if g[0] in seen:
                raise lines.error(f"duplicate unigram {g[0]!r}", line)
            seen.add(g[0])
    for offset, special in enumerate(SPECIALS):
        index[special] = V + offset
    return V, words, index


def read(cls, path: Path):
    lines = _Lines(path)
    line = lines.next()
    while line is not None and line != "\\data\\":  # tools may write a header before \data\
        line = lines.next()
    if line is None:
        raise lines.error("no \\data\\ section up to the end of the file: not an ARPA file")
    counts: list[int] = []
    line = lines.next_nonblank()
    while line is not None and line.startswith("ngram"):
        match = _COUNT.match(line)
        if not match or int(match.group(1)) != len(counts) + 1:
            raise lines.error(f"expected 'ngram {len(counts) + 1}=<count>', got {line!r}")
        counts.append(int(match.group(2)))
        line = lines.next_nonblank()
    if not counts:
        raise lines.error("the \\data\\ section lists no 'ngram n=<count>' lines")
    lines.i -= 1

    sections = [_read_section(lines, n, c) for n, c in enumerate(counts, start=1)]
    end = lines.next_nonblank()
    if end != "\\end\\":
        raise lines.error(f"expected '\\end\\', got {_shown(end)}")

    V, words, index = _vocabulary(sections[0][0], lines, sections[0][3])
    bits = ngram_keys.bits_for(V)
    if len(counts) * bits > 128:
        raise ValueError(f"{path}: order {len(counts)} with {V} words needs {len(counts) * bits} key bits; "
                         "at most 128 are supported")
    tables = []
    for n, (grams, probs, backoffs, numbers) in enumerate(sections, start=1):
        ids = np.empty((len(grams), n), dtype=np.int64)
        for row, (gram, line_number) in enumerate(zip(grams, numbers)):
            try:
                ids[row] = [index[w] for w in gram]
            except KeyError as missing:
                raise lines.error(f"word {missing.args[0]!r} of this {n}-gram has no unigram entry", line_number) from None
        keys = ngram_keys.pack(ids, bits)
        perm = ngram_keys.sort_permutation(keys)
        keys = np.ascontiguousarray(keys[perm])
        if ngram_keys.has_duplicates(keys):
            dup = int(np.flatnonzero(np.all(keys[1:] == keys[:-1], axis=1))[0])
            raise lines.error(f"duplicate {n}-gram", numbers[int(perm[dup + 1])])
        log_prob = np.asarray(probs, dtype=np.float64)[perm] * LN10
        log_backoff = np.asarray(backoffs, dtype=np.float64)[perm] * LN10
        tables.append((torch.from_numpy(keys), torch.from_numpy(np.ascontiguousarray(log_prob)),
                       torch.from_numpy(np.ascontiguousarray(log_backoff))))
    return cls(tables, vocab_size=V, smoothing="arpa", words=words)
