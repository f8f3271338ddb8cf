"""prepare_corpus: tokenizer, token files, train/val split, cache reuse, locking, errors."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import fastlm
from fastlm.data import PreparedCorpus, prepare_corpus
from fastlm.data.sources import resolve_source

SMALL_BUILTIN = ["bisect", "heapq", "fnmatch", "getopt"]  # + the pydoc topics: ~0.5 MB
FASTLM_ROOT = Path(fastlm.__file__).resolve().parents[1]  # where this process found fastlm


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own cache: nothing touches ~/.cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("FASTLM_CACHE", str(path))
    return path


@pytest.fixture(scope="module")
def builtin_small(tmp_path_factory):
    return prepare_corpus("builtin", vocab_size=512, builtin_modules=SMALL_BUILTIN,
                          cache_dir=tmp_path_factory.mktemp("shared-cache"), show_progress=False)


def _docs_from_tokens(corpus: PreparedCorpus, tokens) -> list[str]:
    tokens = np.asarray(tokens)
    assert tokens[-1] == corpus.eos_id  # every document ends with eos
    cuts = np.flatnonzero(tokens == corpus.eos_id)
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [corpus.decode(tokens[s:e]) for s, e in zip(starts, cuts)]


def _corpus_files(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "corpora").iterdir()) if (cache / "corpora").exists() else []


def test_builtin_corpus_tokens_and_split(builtin_small):
    c = builtin_small
    assert c.vocab_size == 512 and c.eos_id == 0
    assert c.train_tokens.dtype == np.uint16 and c.val_tokens.dtype == np.uint16
    assert int(c.train_tokens.max()) < c.vocab_size
    docs = list(resolve_source("builtin", builtin_modules=SMALL_BUILTIN).documents())
    train = _docs_from_tokens(c, c.train_tokens)
    val = _docs_from_tokens(c, c.val_tokens)
    # Split by whole documents: disjoint, complete, and the tokens decode to the exact text.
    assert len(val) >= 1 and len(train) >= 1
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(docs)
    assert 0.01 < len(val) / len(docs) < 0.15  # val_fraction 0.05 of ~80 documents
    meta = json.loads((c.directory / "meta.json").read_text())
    assert meta["train_tokens"] == len(c.train_tokens) and meta["val_documents"] == len(val)
    assert c.tokenizer_path.parent == c.directory and c.tokenizer_path.is_file()


def test_tokenizer_round_trip(builtin_small):
    c = builtin_small
    for text in ["def f(x):\n    return x  # café ☕ 日本語\t\r\n", " leading space", ""]:
        ids = c.encode(text)
        assert c.decode(ids) == text
        assert c.eos_id not in ids
    # BPE learned merges from the corpus: common Python text is well below 1 token per byte.
    sample = "def __init__(self, key=None, reverse=False):\n        return self"
    assert len(c.encode(sample)) < 0.6 * len(sample.encode())
    # The eos string in text is the special token; decode drops it unless asked.
    assert c.encode("<|endoftext|>") == [c.eos_id]
    assert c.decode([c.eos_id], skip_special_tokens=False) == "<|endoftext|>"


def test_cache_reuse_and_keys(tmp_path, cache):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(20):
        (data / f"{i}.txt").write_text(f"document number {i}. " * 30)
    a = prepare_corpus(str(data), vocab_size=300, show_progress=False)
    mtime = (a.directory / "train.bin").stat().st_mtime_ns
    b = prepare_corpus(str(data), vocab_size=300, show_progress=False)
    assert b.directory == a.directory and b.meta["build_id"] == a.meta["build_id"]
    assert (b.directory / "train.bin").stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(a.train_tokens, b.train_tokens)
    # Another vocab size, or a changed source file, is another corpus.
    c = prepare_corpus(str(data), vocab_size=320, show_progress=False)
    assert c.directory != a.directory
    (data / "3.txt").write_text("changed " * 40)
    d = prepare_corpus(str(data), vocab_size=300, show_progress=False)
    assert d.directory != a.directory and d.meta["build_id"] != a.meta["build_id"]
    assert PreparedCorpus.load(a.directory).meta["build_id"] == a.meta["build_id"]
    assert all(n.endswith(".lock") or n.startswith(("data-v300-", "data-v320-"))
               for n in _corpus_files(cache))


def test_concurrent_prepare_builds_once(tmp_path, cache):
    """Two processes call prepare_corpus at the same moment: one builds, the other waits."""
    go = tmp_path / "go"
    builds = tmp_path / "builds.txt"
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        import fastlm.data.prepare as prep
        build = prep._build
        def slow_build(*args, **kw):  # a build slow enough that both processes overlap
            with open({str(builds)!r}, "a") as f:
                f.write("build\\n")
            time.sleep(1.0)
            return build(*args, **kw)
        prep._build = slow_build
        Path(sys.argv[1]).touch()
        while not Path({str(go)!r}).exists():
            time.sleep(0.01)
        c = prep.prepare_corpus("builtin", vocab_size=300, builtin_modules=["bisect"],
                                show_progress=False)
        print(c.meta["build_id"], len(c.train_tokens))
    """)
    env = {**os.environ, "PYTHONPATH": str(FASTLM_ROOT), "FASTLM_CACHE": str(cache),
           "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"ready{i}")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    deadline = time.time() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate() for p in procs]
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    results = [o[0].split() for o in outs]
    assert results[0] == results[1]  # the same build, seen by both
    assert builds.read_text().count("build") == 1
    assert not [n for n in _corpus_files(cache) if n.startswith(".tmp")]


def test_jsonl_source_and_user_tokenizer(tmp_path, builtin_small):
    path = tmp_path / "docs.jsonl"
    with open(path, "w") as f:
        for i in range(40):
            f.write(json.dumps({"body": f"record {i}: the quick brown fox", "n": i}) + "\n")
    c = prepare_corpus(str(path), text_field="body", tokenizer_path=builtin_small.tokenizer_path,
                       vocab_size=99999, show_progress=False)
    assert c.vocab_size == builtin_small.vocab_size  # the user's tokenizer decides the size
    assert c.eos_id == builtin_small.eos_id
    assert (c.directory / "tokenizer.json").read_bytes() == builtin_small.tokenizer_path.read_bytes()
    docs = _docs_from_tokens(c, c.train_tokens) + _docs_from_tokens(c, c.val_tokens)
    assert sorted(docs) == sorted(f"record {i}: the quick brown fox" for i in range(40))
    np.testing.assert_array_equal(c.train_tokens[:len(c.encode(docs[0]))], c.encode(docs[0]))


def test_user_tokenizer_eos_lookup(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    def write_tokenizer(vocab):
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        path = tmp_path / f"tok{len(vocab)}.json"
        tok.save(str(path))
        return path

    data = tmp_path / "d"
    data.mkdir()
    for i in range(4):
        (data / f"{i}.txt").write_text(f"hello world {i}")
    with_s = write_tokenizer({"<unk>": 0, "hello": 1, "world": 2, "</s>": 3})
    c = prepare_corpus(str(data), tokenizer_path=with_s, show_progress=False)
    assert c.eos_id == 3 and c.vocab_size == 4
    without = write_tokenizer({"<unk>": 0, "hello": 1})
    with pytest.raises(ValueError, match="has no end-of-text token"):
        prepare_corpus(str(data), tokenizer_path=without, show_progress=False)
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        prepare_corpus(str(data), tokenizer_path=tmp_path / "missing.json", show_progress=False)


def test_single_text_file_is_split(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("\n\n".join(f"Chapter {i}. " + "Some words here. " * 200 for i in range(60)))
    c = prepare_corpus(str(path), vocab_size=300, show_progress=False)
    chunks = len(list(resolve_source(str(path)).documents()))
    assert chunks > 5
    assert c.meta["train_documents"] + c.meta["val_documents"] == chunks
    assert c.meta["train_documents"] >= 1 and c.meta["val_documents"] >= 1


@pytest.mark.parametrize("case, error, message", [
    ("missing", FileNotFoundError, "data source not found"),
    ("glob", FileNotFoundError, "no files match"),
    ("empty", ValueError, "empty corpus"),
    ("one_doc", ValueError, "only 1 document"),
    ("bad_json", ValueError, r"x\.jsonl:3: invalid JSON"),
    ("no_field", ValueError, r"x\.jsonl:1: no field 'text'"),
    ("vocab", ValueError, "vocab_size must be an integer >= 257"),
    ("val_fraction", ValueError, "val_fraction must be between 0 and 1"),
])
def test_errors_leave_nothing_behind(tmp_path, cache, case, error, message):
    d = tmp_path / "d"
    d.mkdir()
    source, kw = str(d), {}
    if case == "missing":
        source = str(tmp_path / "missing")
    elif case == "glob":
        source = str(d / "*.md")
    elif case == "empty":
        (d / "a.txt").write_text("\n \n")
        (d / "b.txt").write_text("")
    elif case == "one_doc":
        (d / "a.txt").write_text("only one short document")
    elif case in ("bad_json", "no_field"):
        rows = ['{"text": "a"}', '{"text": "b"}', '{"text": oops}']
        (d / "x.jsonl").write_text("\n".join(rows if case == "bad_json" else ['{"txt": "a"}']))
    elif case in ("vocab", "val_fraction"):
        for i in range(3):
            (d / f"{i}.txt").write_text(f"text {i}")
        kw = {"vocab_size": 100} if case == "vocab" else {"val_fraction": 1.0}
    with pytest.raises(error, match=message):
        prepare_corpus(source, show_progress=False, **kw)
    assert all(n.endswith(".lock") for n in _corpus_files(cache))  # no partial corpus
