"""ReplayBatchLoader: the share of replayed windows in every batch, windows never straddling the two
streams, the same global batch for any number of processes, and the new data's draw kept."""
import numpy as np
import pytest
import torch

from fastlm.data import BatchLoader
from fastlm.data.replay import ReplayBatchLoader
from fastlm.data.shards import TokenShards

NEW = np.arange(1000, 1500, dtype=np.int64)  # new-domain ids 1000..1499
OLD = np.arange(0, 300, dtype=np.int64)      # original-stream ids 0..299


def _loader(replay=0.25, rank=0, world=1, g=16, mb=4):
    return ReplayBatchLoader(NEW, OLD, replay=replay, seq_len=8, global_batch_size=g, micro_batch_size=mb,
                             seed=3, rank=rank, world_size=world, prefetch=0)


@pytest.mark.parametrize("replay,g", [(0.25, 16), (0.1, 16), (0.1, 10), (0.0, 8), (0.5, 6)])
def test_every_batch_has_the_replay_share(replay, g):
    loader = _loader(replay, g=g, mb=2)
    for step in range(20):
        rows = torch.cat(loader.batch_for_step(step))
        old = rows < 1000
        assert bool((old.all(1) | (~old).all(1)).all())  # a window is wholly from one stream
        assert int(old.all(1).sum()) == round(replay * g)
        # contiguous windows of the stream they came from
        assert bool(((rows[:, 1:] - rows[:, :-1]) == 1).all())


def test_the_new_data_draw_is_kept():
    plain = BatchLoader(NEW, seq_len=8, global_batch_size=16, micro_batch_size=4, seed=3, prefetch=0)
    mixed = _loader(0.25)
    for step in range(5):
        a, b = torch.cat(plain.batch_for_step(step)), torch.cat(mixed.batch_for_step(step))
        keep = np.setdiff1d(np.arange(16), mixed.replay_slots(step))
        assert torch.equal(a[keep], b[keep])


def test_ranks_split_the_same_global_batch():
    whole = [torch.cat(_loader().batch_for_step(s)) for s in range(4)]
    for s in range(4):
        parts = torch.cat([torch.cat(_loader(rank=r, world=2).batch_for_step(s)) for r in range(2)])
        assert torch.equal(parts, whole[s])


def test_concat_tokens_and_errors():
    c = TokenShards([NEW, OLD])  # the loader's view of the new tokens, then the original stream
    assert len(c) == 800 and c[np.array([0, 499, 500, 799])].tolist() == [1000, 1499, 0, 299]
    with pytest.raises(ValueError, match="replay must be"):
        _loader(1.0)
    with pytest.raises(ValueError, match="original"):
        ReplayBatchLoader(NEW, OLD[:5], replay=0.1, seq_len=8, global_batch_size=4, micro_batch_size=4, seed=0)
