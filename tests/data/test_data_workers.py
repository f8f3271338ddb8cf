"""data.workers and sharded token files: the same bytes for any number of workers, read back as one stream."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fastlm.data import PreparedCorpus, prepare_corpus, shards
from fastlm.data.loader import BatchLoader
from fastlm.data.shards import TokenShards

SMALL_BUILTIN = ["bisect", "heapq", "fnmatch", "getopt"]


def _prepare(cache, workers, **kw):
    return prepare_corpus("builtin", vocab_size=384, builtin_modules=SMALL_BUILTIN, cache_dir=cache,
                          show_progress=False, workers=workers, **kw)


def _token_files(corpus: PreparedCorpus) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(corpus.directory.glob("*.bin"))}


@pytest.fixture(scope="module")
def one_file(tmp_path_factory):
    return _prepare(tmp_path_factory.mktemp("one-file"), workers=1)


@pytest.mark.parametrize("shard_tokens", [None, 20_000])  # None: each split in one file
def test_two_workers_write_the_same_bytes_as_one(tmp_path, monkeypatch, one_file, shard_tokens):
    if shard_tokens:
        monkeypatch.setattr(shards, "SHARD_TOKENS", shard_tokens)
    one = _prepare(tmp_path / "w1", workers=1) if shard_tokens else one_file
    two = _prepare(tmp_path / "w2", workers=2)
    assert _token_files(one) == _token_files(two)
    assert (one.directory / "tokenizer.json").read_bytes() == (two.directory / "tokenizer.json").read_bytes()
    if shard_tokens:  # several files, each past the limit only by its last document, in the order written
        meta = json.loads((two.directory / "meta.json").read_text())
        assert len(meta["train_shards"]) >= 3 and sum(meta["train_shards"]) == meta["train_tokens"]
        assert all(count >= shard_tokens for count in meta["train_shards"][:-1])
        assert sorted(_token_files(two)) == shards.shard_names("train", len(meta["train_shards"])) + ["val.bin"]
        # The same tokens as the corpus written in one file, read through memory maps as one stream.
        assert isinstance(two.train_tokens, TokenShards) and isinstance(two.val_tokens, np.memmap)
        np.testing.assert_array_equal(np.asarray(two.train_tokens), np.asarray(one_file.train_tokens))
        np.testing.assert_array_equal(np.asarray(two.val_tokens), np.asarray(one_file.val_tokens))
        assert PreparedCorpus.load(two.directory).train_tokens.size == one_file.train_tokens.size


def test_loader_reads_shards_like_one_array():
    rng = np.random.default_rng(0)
    whole = rng.integers(0, 500, size=10_007).astype(np.uint16)
    cuts = [0, 3, 2_500, 2_501, 7_000, whole.size]
    view = TokenShards([whole[a:b] for a, b in zip(cuts, cuts[1:])])
    kwargs = dict(seq_len=64, global_batch_size=16, micro_batch_size=8, seed=3)
    ours, reference = BatchLoader(view, **kwargs), BatchLoader(whole, **kwargs)
    for _ in range(5):
        for a, b in zip(ours.next(), reference.next()):
            assert torch_equal(a, b)


def torch_equal(a, b) -> bool:
    return bool((a == b).all()) and a.shape == b.shape


@pytest.mark.parametrize("cuts", [[0, 1, 2, 50], [0, 17, 17, 30, 50], [0, 50]])
def test_token_shards_index_like_numpy(cuts):
    whole = np.arange(50, dtype=np.uint32) * 3
    view = TokenShards([whole[a:b] for a, b in zip(cuts, cuts[1:])])
    assert len(view) == 50 and view.shape == (50,) and view.dtype == whole.dtype
    for index in [slice(None), slice(5, 45), slice(16, 18), slice(-7, None), slice(3, 40, 4), slice(40, 3, -3),
                  slice(30, 10), slice(0, 200)]:
        np.testing.assert_array_equal(view[index], whole[index])
    for i in [0, 16, 17, 49, -1, -50]:
        assert view[i] == whole[i]
    fancy = np.array([[0, 49, 17], [16, 2, -1]])
    np.testing.assert_array_equal(view[fancy], whole[fancy])
    for bad in [50, -51]:
        with pytest.raises(IndexError):
            view[bad]
    with pytest.raises(IndexError, match="out of bounds"):
        view[np.array([3, 50])]


def test_a_damaged_shard_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "SHARD_TOKENS", 20_000)
    corpus = _prepare(tmp_path, workers=1)
    damaged = corpus.directory / "train-00001.bin"
    damaged.write_bytes(damaged.read_bytes()[:-2])
    with pytest.raises(ValueError, match="train-00001.bin has"):
        PreparedCorpus.load(corpus.directory)
    again = _prepare(tmp_path, workers=1)  # the cache sees an incomplete corpus and builds it anew
    assert (again.directory / "train-00001.bin").stat().st_size == again.train_tokens.parts[1].size * 2


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_workers_must_be_a_positive_integer(tmp_path, workers):
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        _prepare(tmp_path, workers=workers)


def test_config_rejects_zero_workers():
    from fastlm.train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.workers = 0"):
        load_config("tiny", overrides=["data.workers=0"])


def test_token_shards_of_mixed_dtypes_read_in_the_widest():
    small, wide = np.arange(5, dtype=np.uint16), np.arange(70000, 70004, dtype=np.uint32)
    view = TokenShards([small, TokenShards([wide])])  # nested views read the same way
    whole = np.concatenate([small.astype(np.uint32), wide])
    assert view.dtype == np.uint32 and view[2:7].dtype == np.uint32 and view[0:3].dtype == np.uint32
    np.testing.assert_array_equal(view[:], whole)
    np.testing.assert_array_equal(view[np.array([[0, 8], [5, 4]])], whole[np.array([[0, 8], [5, 4]])])
    assert view[-1] == 70003 and np.asarray(view).dtype == np.uint32
