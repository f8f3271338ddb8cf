"""[parallel] config keys (one-line errors) and BatchLoader's uneven shares."""
from __future__ import annotations

import numpy as np
import pytest

from fastlm.data import BatchLoader
from fastlm.train import ConfigError, load_config
from fastlm.train.config import rank_samples


@pytest.mark.parametrize("item, message", [
    ("parallel.bucket_mb=0", "parallel.bucket_mb = 0.0: expected a positive number"),
    ("parallel.timeout_s=-1", "parallel.timeout_s = -1.0: expected a positive number of seconds"),
    ("parallel.grad_reduce_dtype=fp8", 'parallel.grad_reduce_dtype = "fp8": expected one of fp32, bf16, fp16'),
    ("parallel.sync=sometimes", 'parallel.sync = "sometimes": expected one of every_step, local_sgd'),
    ("parallel.sync_every=4", "parallel.sync_every = 4: only used with parallel.sync"),
    ("parallel.dp_shares=[0, 1]", "parallel.dp_shares = [0, 1]: expected a list of positive integers"),
])
def test_parallel_config_errors(item, message):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", [item])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_parallel_config_combinations(monkeypatch):
    with pytest.raises(ConfigError, match="shard_optimizer = true: not available with parallel.sync"):
        load_config("tiny", ["parallel.shard_optimizer=true", "parallel.sync=local_sgd"])
    # Not launched (e.g. loading a finished run): the shares say how many ranks; launched, WORLD_SIZE does.
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert load_config("tiny", ["parallel.dp_shares=[3, 1]", "train.micro_batch_size=4"]).parallel.dp_shares == [3, 1]
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ConfigError, match=r"parallel.dp_shares = \[3, 1\]: expected 1 shares"):
        load_config("tiny", ["parallel.dp_shares=[3, 1]", "train.micro_batch_size=4"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    c = load_config("tiny", ["parallel.dp_shares=[3, 1]", "train.micro_batch_size=4"])
    assert c.dp_size() == 2 and rank_samples(c, 2) == [12, 4]
    with pytest.raises(ConfigError, match="whole multiples of train.micro_batch_size = 8"):
        load_config("tiny", ["parallel.dp_shares=[3, 1]"])
    c = load_config("tiny", ["parallel.sync=local_sgd", "parallel.sync_every=4", "parallel.grad_reduce_dtype=bf16"])
    assert c.parallel.sync_every == 4 and "sync_every = 4" in c.to_toml()


def test_loader_shares_cover_the_global_batch_like_one_process():
    tokens = np.arange(10_000, dtype=np.int64)
    kw = dict(seq_len=8, global_batch_size=12, micro_batch_size=1, seed=3, prefetch=0)
    whole = np.concatenate([b.numpy() for b in BatchLoader(tokens, **kw).batch_for_step(5)])
    parts = [np.concatenate([b.numpy() for b in BatchLoader(tokens, rank=r, world_size=3, shares=[1, 2, 3],
                                                                **kw).batch_for_step(5)]) for r in range(3)]
    assert [len(p) for p in parts] == [2, 4, 6]
    assert np.array_equal(np.concatenate(parts), whole)
    even = [BatchLoader(tokens, rank=r, world_size=2, **kw).batch_for_step(5) for r in range(2)]
    assert np.array_equal(np.concatenate([np.concatenate([b.numpy() for b in e]) for e in even]), whole)
    with pytest.raises(ValueError, match="whole multiples of micro_batch_size 4"):
        BatchLoader(tokens, **{**kw, "micro_batch_size": 4}, rank=0, world_size=2, shares=[1, 5])
