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

import contextlib
import gc
import math
import os
import re
import tempfile
from pathlib import Path
from typing import NamedTuple

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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write(model, path: Path) -> None:
    strings = np.array(_word_strings(model), dtype=object)
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
                names = strings[ids[:, 0]]
                for j in range(1, n):  # object arrays: one C loop of str concatenations per word
                    names = names + " " + strings[ids[:, j]]
                names = names.tolist()
                probs = (log_prob.numpy() / LN10).tolist()
                if n < model.order:
                    backoffs = (log_backoff.numpy() / LN10).tolist()
                    f.writelines(f"{p:.10g}\t{w}\t{b:.10g}\n" for p, w, b in zip(probs, names, backoffs))
                else:
                    f.writelines(f"{p:.10g}\t{w}\n" for p, w in zip(probs, names))
            f.write("\n\\end\\\n")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a model file is as readable as any other
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
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


def _number(text: str, lines: _Lines, what: str, line: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise lines.error(f"{what} {text!r} is not a number", line) from None


class _Section(NamedTuple):
    grams: list[list[str]]   # the words of each entry
    log10_prob: np.ndarray
    log10_backoff: np.ndarray
    first_line: int          # entries are consecutive lines from here


def _floats(texts: list[str], lines: _Lines, first_line: int, what: str) -> np.ndarray:
    try:
        return np.array(texts, dtype=np.float64)
    except ValueError:  # find and name the bad one
        for offset, text in enumerate(texts):
            _number(text, lines, what, first_line + offset)
        raise


def _read_section(lines: _Lines, n: int, count: int) -> _Section:
    """The `\\n-grams:` section of `count` entries, parsed a section at a time (fast for big files)."""
    header = lines.next_nonblank()
    if header != f"\\{n}-grams:":
        raise lines.error(f"expected '\\{n}-grams:', got {_shown(header)}")
    first = lines.i + 1
    fields = [line.split() for line in lines.lines[lines.i:lines.i + count]]
    short = next((i for i, f in enumerate(fields) if not f or f[0].startswith("\\")), len(fields))
    if short < count:
        raise lines.error(f"the {n}-gram section has fewer entries than the {count} its header announces",
                          first + short)
    if not {len(f) for f in fields} <= {n + 1, n + 2}:
        bad = next(i for i, f in enumerate(fields) if len(f) not in (n + 1, n + 2))
        raise lines.error(f"a {n}-gram line needs a log10 probability, {n} words and an optional backoff, "
                          f"got {len(fields[bad])} fields", first + bad)
    lines.i += count
    after = lines.next()
    if after not in ("", None) and not after.startswith("\\"):
        raise lines.error(f"the {n}-gram section has more entries than the {count} its header announces")
    if after is not None and after.startswith("\\"):
        lines.i -= 1  # let the caller read the next section header
    probs = _floats([f[0] for f in fields], lines, first, "probability")
    backoffs = _floats([f[n + 1] if len(f) == n + 2 else "0" for f in fields], lines, first, "backoff")
    return _Section([f[1:n + 1] for f in fields], probs, backoffs, first)


def _vocabulary(unigrams: list[list[str]], lines: _Lines, first_line: int) -> tuple[int, list[str] | None, dict]:
    """(vocab_size, words or None, string -> internal id) from the unigram section."""
    plain = [g[0] for g in unigrams if g[0] not in SPECIALS]
    decimal = all(w.isdigit() and str(int(w)) == w for w in plain)
    words = None if decimal else plain
    V = (max((int(w) for w in plain), default=-1) + 1) if decimal else len(plain)
    index = {w: int(w) for w in plain} if decimal else {w: i for i, w in enumerate(plain)}
    if not decimal and len(index) != len(plain):
        seen = set()
        for offset, g in enumerate(unigrams):
            if g[0] in seen:
                raise lines.error(f"duplicate unigram {g[0]!r}", first_line + offset)
            seen.add(g[0])
    for offset, special in enumerate(SPECIALS):
        index[special] = V + offset
    return V, words, index


def read(cls, path: Path):
    # Millions of small lists: the cyclic GC would rescan them over and over (they hold no cycles).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _read(cls, path)
    finally:
        if enabled:
            gc.enable()


def _read(cls, path: Path):
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

    V, words, index = _vocabulary(sections[0].grams, lines, sections[0].first_line)
    bits = ngram_keys.bits_for(V)
    if len(counts) * bits > 128:
        raise ValueError(f"{path}: order {len(counts)} with {V} words needs {len(counts) * bits} key bits; "
                         "at most 128 are supported")
    tables = []
    for n, section in enumerate(sections, start=1):
        try:
            ids = np.array([index[w] for gram in section.grams for w in gram], dtype=np.int64).reshape(-1, n)
        except KeyError as missing:
            row = next(i for i, gram in enumerate(section.grams) if missing.args[0] in gram)
            raise lines.error(f"word {missing.args[0]!r} of this {n}-gram has no unigram entry",
                              section.first_line + row) from None
        keys = ngram_keys.pack(ids, bits)
        perm = ngram_keys.sort_permutation(keys)
        keys = np.ascontiguousarray(keys[perm])
        if ngram_keys.has_duplicates(keys):
            dup = int(np.flatnonzero(np.all(keys[1:] == keys[:-1], axis=1))[0])
            raise lines.error(f"duplicate {n}-gram", section.first_line + int(perm[dup + 1]))
        log_prob = np.ascontiguousarray(section.log10_prob[perm] * LN10)
        log_backoff = np.ascontiguousarray(section.log10_backoff[perm] * LN10)
        tables.append((torch.from_numpy(keys), torch.from_numpy(log_prob), torch.from_numpy(log_backoff)))
    return cls(tables, vocab_size=V, smoothing="arpa", words=words)
