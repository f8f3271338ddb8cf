"""Document sources: where the text comes from.

A source resolves to a `CorpusSource`: a fingerprint (what the cache key is built from) and
an iterator of documents (strings) in a fixed order. Two kinds:

- "builtin": real text that ships with every Python: the documentation topics in
  `pydoc_data.topics` and the source files of a subset of the standard library. No download.
- files: a text file, a directory (recursive), or a glob. `.jsonl`/`.json` files hold one
  JSON object per line whose `text_field` is the document; any other file is text.

A text file is one document, except that long files are cut (at blank lines where possible)
into documents of at most `TEXT_CHUNK_CHARS` characters, so that a single-file corpus can
still be split into train and validation by document.
"""
from __future__ import annotations

import glob as globlib
import json
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

TEXT_CHUNK_CHARS = 32_768
JSONL_SUFFIXES = (".jsonl", ".json")

# Pure-Python standard-library modules with plenty of prose (docstrings, comments): about 2 MB of
# source, plus ~0.5 MB of pydoc topics. Names that a Python version lacks are skipped.
DEFAULT_BUILTIN_MODULES: tuple[str, ...] = (
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "collections", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "difflib", "enum", "fnmatch", "fractions",
    "functools", "getopt", "gettext", "glob", "heapq", "hmac", "html.parser", "inspect",
    "json.decoder", "json.encoder", "logging", "numbers", "operator", "optparse", "pathlib",
    "pickle", "pprint", "queue", "random", "shlex", "shutil", "statistics", "string",
    "tempfile", "textwrap", "threading", "timeit", "tokenize", "traceback", "types", "typing",
    "unittest.case", "urllib.parse", "uuid", "warnings", "weakref",
)


@dataclass
class CorpusSource:
    """A resolved data source: `fingerprint` keys the cache, `documents()` yields the text."""

    name: str                        # "builtin" or the source as the user wrote it
    kind: str                        # "builtin" | "files"
    files: list[Path] = field(default_factory=list)
    builtin_modules: tuple[str, ...] = ()
    text_field: str = "text"

    def fingerprint(self) -> dict:
        """Everything the documents depend on: file paths, sizes and mtimes (cheap to get)."""
        stats = [[str(p), *_stat(p)] for p in self.files]
        fp = {"kind": self.kind, "files": stats, "chunk_chars": TEXT_CHUNK_CHARS}
        if self.kind == "builtin":
            fp["python"] = sys.version
            fp["modules"] = list(self.builtin_modules)
        elif any(p.suffix in JSONL_SUFFIXES for p in self.files):
            fp["text_field"] = self.text_field
        return fp

    def documents(self) -> Iterator[str]:
        """Non-empty documents, always in the same order."""
        if self.kind == "builtin":
            yield from builtin_documents(self.builtin_modules)
            return
        for path in self.files:
            if path.suffix.lower() in JSONL_SUFFIXES:
                yield from jsonl_documents(path, self.text_field)
            else:
                yield from text_documents(path)


def resolve_source(source="builtin", *, text_field: str = "text",
                   builtin_modules: Sequence[str] | None = None) -> CorpusSource:
    """Turn `"builtin"`, a path, a directory, a glob (or a list of those) into a CorpusSource."""
    if isinstance(builtin_modules, str):
        raise ValueError(f"builtin_modules must be a list of module names, got {builtin_modules!r}")
    if isinstance(source, str) and source == "builtin":
        modules = tuple(DEFAULT_BUILTIN_MODULES if builtin_modules is None else builtin_modules)
        files = [p for p in [_pydoc_topics_file()] if p is not None]
        files += [p for p in (_stdlib_module_file(m) for m in modules) if p is not None]
        return CorpusSource("builtin", "builtin", files, modules, text_field)
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not sources:
        raise ValueError("data source is empty: give 'builtin', a path, a directory or a glob")
    files: list[Path] = []
    for s in sources:
        if not str(s).strip():
            raise ValueError("data source is an empty string: give 'builtin', a path or a glob")
        files += expand_paths(s)
    files = list(dict.fromkeys(files))  # drop duplicates, keep order
    name = ", ".join(str(s) for s in sources)
    return CorpusSource(name, "files", files, (), text_field)


def expand_paths(source) -> list[Path]:
    """A file, a directory (all non-hidden files below it) or a glob, as sorted absolute paths."""
    text = str(source)
    path = Path(os.path.expanduser(text))
    if any(c in text for c in "*?["):
        matches = [Path(p) for p in globlib.glob(str(path), recursive=True)]
        files = sorted({f.resolve() for m in matches for f in _files_under(m)})
        if not files:
            raise FileNotFoundError(f"data source: no files match {text!r}")
        return files
    if not path.exists():
        raise FileNotFoundError(f"data source not found: {text!r}")
    files = sorted(f.resolve() for f in _files_under(path))
    if not files:
        raise FileNotFoundError(f"data source: no files in directory {text!r}")
    return files


def _files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    out = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # skip .git and friends
        out += [Path(root) / n for n in names if not n.startswith(".")]
    return [p for p in out if p.is_file()]


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


# ---------------------------------------------------------------- builtin corpus

def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_module_file(name: str) -> Path | None:
    """`json.decoder` -> <stdlib>/json/decoder.py (or a package's __init__.py); None if absent."""
    base = _stdlib_dir().joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _pydoc_topics_file() -> Path | None:
    try:
        import pydoc_data.topics as topics
    except ImportError:  # some distributions strip it; the modules are then the whole corpus
        return None
    return Path(topics.__file__)


def builtin_documents(modules: Sequence[str] | None = None) -> Iterator[str]:
    """Every pydoc topic (one document each), then each standard-library module's source."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        topics = {}
    for name in sorted(topics):
        if topics[name].strip():
            yield topics[name]
    for module in DEFAULT_BUILTIN_MODULES if modules is None else modules:
        path = _stdlib_module_file(module)
        if path is not None:
            text = path.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                yield text


# ---------------------------------------------------------------- user files

def text_documents(path: Path, chunk_chars: int = TEXT_CHUNK_CHARS) -> Iterator[str]:
    """A text file as documents of at most `chunk_chars` characters; binary files are skipped."""
    data = Path(path).read_bytes()
    if b"\x00" in data[:8192]:  # not text (an image, an archive, ...)
        return
    text = data.decode("utf-8", errors="replace")
    for chunk in _chunks(text, chunk_chars):
        if chunk.strip():
            yield chunk


def _chunks(text: str, limit: int) -> Iterator[str]:
    """Cut at the last blank line (else newline, else anywhere) before `limit` characters."""
    start = 0
    while len(text) - start > limit:
        end = start + limit
        cut = text.rfind("\n\n", start + limit // 2, end)
        if cut >= 0:
            cut += 2
        else:
            cut = text.rfind("\n", start + limit // 2, end)
            cut = end if cut < 0 else cut + 1
        yield text[start:cut]
        start = cut
    yield text[start:]


def jsonl_documents(path: Path, text_field: str = "text") -> Iterator[str]:
    """One document per line: the string in `text_field`. Errors name the file and line."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object with field {text_field!r}, "
                                 f"got {type(record).__name__}")
            if text_field not in record:
                fields = ", ".join(map(repr, list(record)[:10])) or "none"
                raise ValueError(f"{where}: no field {text_field!r} (fields: {fields}); "
                                 f"set [data] text_field")
            text = record[text_field]
            if not isinstance(text, str):
                raise ValueError(f"{where}: field {text_field!r} is {type(text).__name__}, "
                                 f"expected a string")
            if text.strip():
                yield text
