"""Client partitions: disjoint and complete, IID near-equal, Dirichlet skew growing as alpha shrinks, batches."""
from __future__ import annotations

import numpy as np
import pytest

from fastlm.federated.partition import ClientData, partition_windows
from fastlm.train.errors import ConfigError


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
@pytest.mark.parametrize("n,clients", [(1000, 10), (37, 5), (7, 7)])
def test_partitions_are_disjoint_and_complete(partition, n, clients):
    parts = partition_windows(n, clients=clients, partition=partition, alpha=1.0, sources=3, seed=1)
    assert len(parts) == clients and all(len(p) > 0 for p in parts)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(n))
    if partition == "iid":
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def _source_entropy(parts, n, sources):
    source_of = np.minimum(np.arange(n) * sources // n, sources - 1)
    out = []
    for p in parts:
        q = np.bincount(source_of[p], minlength=sources) / len(p)
        q = q[q > 0]
        out.append(float(-(q * np.log(q)).sum()))
    return np.mean(out)


def test_dirichlet_skew_grows_as_alpha_shrinks():
    n, clients, sources = 5000, 10, 10
    iid = _source_entropy(partition_windows(n, clients=clients, partition="iid", seed=0), n, sources)
    skews = [_source_entropy(partition_windows(n, clients=clients, partition="dirichlet", alpha=a, sources=sources,
                                               seed=0), n, sources) for a in (100.0, 1.0, 0.1)]
    assert iid == pytest.approx(np.log(sources), abs=0.05)  # every client sees every source evenly
    assert skews[0] > skews[1] > skews[2]
    assert skews[2] < 0.6 * np.log(sources)


def test_partition_errors():
    with pytest.raises(ConfigError, match="only 3 windows"):
        partition_windows(3, clients=4)
    tiny_alpha = partition_windows(12, clients=12, partition="dirichlet", alpha=0.001, sources=1)
    assert all(len(p) == 1 for p in tiny_alpha)  # a client the draw left empty takes a window from the largest


def test_client_batches_cover_its_windows_each_epoch():
    tokens = np.arange(400)
    data = ClientData(tokens, np.array([1, 4, 5, 9, 12, 13]), seq_len=10, batch_size=2, micro_batch_size=1, seed=0,
                      client=3)
    epoch = np.concatenate([data.batch_windows(s) for s in range(3)])
    assert sorted(epoch.tolist()) == [1, 4, 5, 9, 12, 13]
    micro = data.batch(0)
    assert len(micro) == 2 and micro[0].shape == (1, 10)
    assert micro[0][0, 0].item() % 10 == 0 and micro[0][0, 0].item() // 10 in {1, 4, 5, 9, 12, 13}
    small = ClientData(tokens, np.array([2, 3, 7]), seq_len=10, batch_size=8, micro_batch_size=2, seed=0, client=0)
    assert small.batch_size == 2  # fewer windows than a batch: a whole number of micro-batches
