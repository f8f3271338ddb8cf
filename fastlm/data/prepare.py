"""Prepare a corpus once: split by document, train the tokenizer, tokenize into token files.

Layout of a prepared corpus (a directory in the cache):
    tokenizer.json   the tokenizer (trained on the training split, or the user's copy)
    train.bin        training tokens, uint16 (vocab <= 65536) or uint32, `eos` after each document
    val.bin          validation tokens, same format, from documents disjoint from training
    meta.json        what it is: key, sizes, dtype, eos id, where the text came from

A split larger than fastlm.data.shards.SHARD_TOKENS is written in several files instead
(`train-00000.bin`, ...; their sizes in meta.json's `train_shards` / `val_shards`) and read back
memory-mapped as one stream. Tokenization runs over `workers` processes (fastlm.data.encode_pool):
the token files are byte-identical whatever their number.

The directory name carries a key of the sources (paths, sizes, mtimes), the vocabulary size and
the tokenizer, so a later run with the same inputs reuses it. It is built in a temporary
directory and renamed into place while holding a file lock: concurrent processes (the ranks of
one job, or two jobs) build it once, the others wait and reuse it, and an error or an
interruption leaves nothing half-written behind.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from fastlm.data.encode_pool import encoded_batches
from fastlm.data.shards import ShardWriter, open_tokens
from fastlm.data.sources import CorpusSource, resolve_source
from fastlm.data.tokenizer import EOS_TOKEN, find_eos_id, load_tokenizer, train_bpe

FORMAT_VERSION = 1
ENCODE_BATCH_CHARS = 1 << 20  # text per encode_batch call: big enough to use every core


@dataclass
class PreparedCorpus:
    directory: Path
    tokenizer_path: Path
    vocab_size: int            # the tokenizer's actual size (max id + 1), may be < requested
    eos_id: int
    train_tokens: np.memmap    # 1-D, read-only (a fastlm.data.shards.TokenShards when in several files)
    val_tokens: np.memmap
    key: str
    meta: dict = field(default_factory=dict, repr=False)
    _tok: object = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def load(cls, directory: str | Path) -> "PreparedCorpus":
        """Open a prepared corpus directory (ValueError if it is not a complete one)."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / "meta.json").read_text())
            dtype = np.dtype(meta["dtype"])
            train = open_tokens(directory, "train", dtype, meta.get("train_shards", [meta["train_tokens"]]))
            val = open_tokens(directory, "val", dtype, meta.get("val_shards", [meta["val_tokens"]]))
            if len(train) != meta["train_tokens"] or len(val) != meta["val_tokens"]:
                raise ValueError("the token files' sizes disagree with meta.json")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"not a prepared corpus: {str(directory)!r} ({e})") from None
        return cls(directory, directory / "tokenizer.json", meta["vocab_size"], meta["eos_id"],
                   train, val, meta["key"], meta)

    def tokenizer(self):
        if self._tok is None:
            self._tok = load_tokenizer(self.tokenizer_path)
        return self._tok

    def encode(self, text: str) -> list[int]:
        # add_special_tokens=False: no BOS/EOS from a user tokenizer's post-processor.
        return self.tokenizer().encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return self.tokenizer().decode(ids, skip_special_tokens=skip_special_tokens)


def default_cache_dir() -> Path:
    return Path(os.environ.get("FASTLM_CACHE") or Path.home() / ".cache" / "fastlm")


def prepare_corpus(source="builtin", *, vocab_size: int = 4096, text_field: str = "text",
                   tokenizer_path: str | Path | None = None, val_fraction: float = 0.05,
                   builtin_modules: Sequence[str] | None = None,
                   augment=None,  # adds training documents (fastlm.data.counterfactual.Counterfactual)
                   cache_dir: str | Path | None = None,
                   show_progress: bool = True, deidentify=None, deid_operation: str = "anonymize",
                   deid_key: bytes | None = None, workers: int = 1) -> PreparedCorpus:
    """Prepare (or reuse from the cache) the tokenized train/validation corpus of `source`.

    source: "builtin" (pydoc topics + standard-library sources), a file, a directory, a glob,
    or a list of those. tokenizer_path: an existing tokenizer.json to use instead of training
    one on the training split (then `vocab_size` is ignored). deidentify: entity types (or "all")
    replaced in every document before the tokenizer is trained or applied (fastlm.data.deid), with
    `deid_operation` (and `deid_key` for the keyed ones); part of the cache key. workers: processes
    that tokenize (the result is the same for any number, so it is not part of the key).
    """
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    src = resolve_source(source, text_field=text_field, builtin_modules=builtin_modules)
    deid = None
    if deidentify is not None:
        from fastlm.data.deid.corpus import deid_settings

        deid = deid_settings(deidentify, deid_operation, deid_key)
    user_tok = None
    if tokenizer_path is not None:
        user_tok = Path(tokenizer_path).expanduser().resolve()
        find_eos_id(load_tokenizer(user_tok), str(user_tok))  # fail early, before any work
    key = _cache_key(src, vocab_size, user_tok, val_fraction, deid)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = root / "corpora"
    if augment is not None:  # more training documents: another corpus, another key
        key = hashlib.sha256(json.dumps([key, augment.fingerprint()], sort_keys=True).encode()).hexdigest()
    name = f"{_slug(src)}-{'tok' if user_tok else f'v{vocab_size}'}-{key[:16]}"
    final = root / name

    with contextlib.suppress(ValueError):
        corpus = PreparedCorpus.load(final)  # the common case: built by an earlier run
        _say(show_progress, f"fastlm: using cached corpus {final}")
        return corpus

    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{name}.lock"):
        with contextlib.suppress(ValueError):
            corpus = PreparedCorpus.load(final)  # another process built it while we waited
            _say(show_progress, f"fastlm: using cached corpus {final}")
            return corpus
        # We hold the lock, so leftovers of this key are from a killed build (or a bad copy).
        for stale in root.glob(f".tmp-{name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
        try:
            _say(show_progress, f"fastlm: preparing corpus {src.name!r} in {final}")
            _build(tmp, src, key, vocab_size, user_tok, val_fraction, show_progress, augment, deid, workers)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return PreparedCorpus.load(final)


# ---------------------------------------------------------------- building

def _build(out: Path, src: CorpusSource, key: str, vocab_size: int, user_tok: Path | None,
           val_fraction: float, show_progress: bool, augment=None, deid=None, workers: int = 1) -> None:
    t0 = time.perf_counter()
    documents, deid_meta = src.documents, None
    if deid is not None:  # de-identify once into a scratch file that the passes below read
        documents, deid_meta = _deidentified(out / "deid-documents.jsonl", src, deid, show_progress)
    # Pass 1: which documents are validation (decided by a hash of their text, so by document).
    fractions, chars = [], 0
    for doc in documents():
        fractions.append(_hash_fraction(doc))
        chars += len(doc)
    is_val = _split(fractions, val_fraction, src.name)
    if augment is not None:  # each training document's mirrored copy right after it, never in validation
        documents, is_val = augment.expand(documents, is_val)

    # Pass 2: the tokenizer, trained on training documents only.
    if user_tok is not None:
        shutil.copyfile(user_tok, out / "tokenizer.json")
        tok = load_tokenizer(out / "tokenizer.json")
    else:
        train_docs = (d for d, v in zip(documents(), is_val) if not v)
        tok = train_bpe(train_docs, vocab_size, length=is_val.count(False),
                        show_progress=show_progress)
        tok.save(str(out / "tokenizer.json"))
    eos_id = find_eos_id(tok, "tokenizer")
    actual_vocab = max(tok.get_vocab(with_added_tokens=True).values()) + 1
    dtype = np.uint16 if actual_vocab <= 1 << 16 else np.uint32

    # Pass 3: tokenize every document once, eos after each (over `workers` processes, results in order).
    writers = {False: ShardWriter(out, "train"), True: ShardWriter(out, "val")}
    bar = _progress(show_progress, chars)
    sent: collections.deque = collections.deque()  # (flags, chars) of each batch read, until its tokens return

    def texts():
        for docs, flags in _batches(documents(), is_val):
            sent.append((flags, sum(map(len, docs))))
            yield docs
    for encoded in encoded_batches(tok, out / "tokenizer.json", texts(), dtype, eos_id, workers):
        flags, batch_chars = sent.popleft()
        for ids, v in zip(encoded, flags):
            writers[v].write(ids)
        bar.update(batch_chars)
    bar.close()
    shards = {v: writer.close() for v, writer in writers.items()}
    counts = {v: sum(c) for v, c in shards.items()}

    meta = {
        "format": FORMAT_VERSION, "key": key, "source": src.name, "kind": src.kind,
        "vocab_size": actual_vocab, "requested_vocab_size": None if user_tok else vocab_size,
        "tokenizer": str(user_tok) if user_tok else "trained",
        "eos_id": eos_id, "eos_token": tok.id_to_token(eos_id), "dtype": np.dtype(dtype).name,
        "train_tokens": counts[False], "val_tokens": counts[True],
        **({"train_shards": shards[False]} if len(shards[False]) > 1 else {}),
        **({"val_shards": shards[True]} if len(shards[True]) > 1 else {}),
        "train_documents": is_val.count(False), "val_documents": is_val.count(True),
        "chars": chars, "val_fraction": val_fraction,
        "augment": augment.fingerprint() if augment is not None else None,
        "build_id": uuid.uuid4().hex, "built_at": time.time(),
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    if deid_meta is not None:
        meta["deid"] = deid_meta  # counts per type, never the values
        (out / "deid-documents.jsonl").unlink()
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    _say(show_progress, f"fastlm: {chars / 1e6:.2f}M chars -> {counts[False]:,} train + "
                        f"{counts[True]:,} val tokens, vocab {actual_vocab} "
                        f"({meta['build_seconds']:.1f}s)")


def _deidentified(path: Path, src: CorpusSource, deid, show_progress: bool):
    """(documents(): the de-identified documents, read back from `path`; the report for meta.json)."""
    from fastlm.data.deid.corpus import deidentify_documents

    counts: dict[str, int] = {}
    kept = 0
    with open(path, "w", encoding="utf-8") as f:
        for doc in deidentify_documents(src.documents(), deid, counts):
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
            kept += 1
    _say(show_progress, f"fastlm: de-identified {src.name!r}: {counts or 'nothing found'}")

    def documents() -> Iterator[str]:
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)
    report = {**deid.fingerprint(), "counts": counts, "documents": kept}
    report.pop("key")
    return documents, report


def _hash_fraction(text: str) -> float:
    """A stable number in [0, 1) from a document's text."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _split(fractions: list[float], val_fraction: float, name: str) -> list[bool]:
    if not fractions:
        raise ValueError(f"empty corpus: data source {name!r} has no text")
    if len(fractions) < 2:
        raise ValueError(f"data source {name!r} has only 1 document; a train/validation split "
                         f"needs at least 2 (add files, or text longer than one chunk)")
    is_val = [f < val_fraction for f in fractions]
    # Keep both splits non-empty on small corpora, still decided by the hashes alone.
    if not any(is_val):
        is_val[int(np.argmin(fractions))] = True
    if all(is_val):
        is_val[int(np.argmax(fractions))] = False
    return is_val


def _batches(docs: Iterator[str], flags: list[bool]):
    batch, batch_flags, size = [], [], 0
    for doc, flag in zip(docs, flags):
        batch.append(doc)
        batch_flags.append(flag)
        size += len(doc)
        if size >= ENCODE_BATCH_CHARS:
            yield batch, batch_flags
            batch, batch_flags, size = [], [], 0
    if batch:
        yield batch, batch_flags


def _cache_key(src: CorpusSource, vocab_size, user_tok: Path | None, val_fraction, deid=None) -> str:
    parts = {
        "format": FORMAT_VERSION, "source": src.fingerprint(),
        "val_fraction": float(val_fraction), "eos": EOS_TOKEN,
        "vocab_size": None if user_tok else vocab_size,
        "tokenizer_sha256": hashlib.sha256(user_tok.read_bytes()).hexdigest() if user_tok else None,
    }
    if deid is not None:  # only when set: corpora prepared without it keep their key
        parts["deid"] = deid.fingerprint()
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _slug(src: CorpusSource) -> str:
    if src.kind == "builtin":
        return "builtin"
    stem = Path(src.name.split(",")[0].strip().rstrip("/*")).name or "data"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:40] or "data"


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock between processes (and threads) on this machine: fcntl.flock."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking, concurrent builds are then not coordinated
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _NoBar:
    def update(self, n): pass
    def close(self): pass


def _progress(show: bool, total: int):
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="char", unit_scale=True, desc="tokenizing", file=sys.stderr)


def _say(show: bool, message: str) -> None:
    if show:
        print(message, file=sys.stderr, flush=True)
