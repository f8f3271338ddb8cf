"""BatchLoader (deterministic, data-parallel slicing, resume, prefetch thread) and eval_batches."""
import threading

import numpy as np
import pytest
import torch

from fastlm.data import BatchLoader, eval_batches

# Token i is i: each window must then be a run of consecutive numbers.
TOKENS = np.arange(10_000, dtype=np.uint32)


def loader(**kw):
    args = dict(seq_len=16, global_batch_size=8, micro_batch_size=2, seed=1234)
    return BatchLoader(TOKENS, **{**args, **kw})


def take(ld, n):
    with ld:
        return [ld.next() for _ in range(n)]


def cat(step):
    return torch.cat(step)


def test_batches_are_real_windows():
    steps = take(loader(), 3)
    for step in steps:
        assert len(step) == 4 and all(mb.shape == (2, 16) and mb.dtype == torch.long for mb in step)
        rows = cat(step)
        assert torch.equal(rows - rows[:, :1], torch.arange(16).expand(8, 16))  # contiguous windows
        assert int(rows.max()) < len(TOKENS)
    assert not torch.equal(cat(steps[0]), cat(steps[1]))  # a new draw each step


def test_deterministic_from_seed_and_prefetch_independent():
    a, b = take(loader(), 4), take(loader(prefetch=0), 4)
    assert all(torch.equal(cat(x), cat(y)) for x, y in zip(a, b))
    c = take(loader(seed=99), 4)
    assert not torch.equal(cat(a[0]), cat(c[0]))
    # The definition in the interface: starts drawn from default_rng([seed, step]).
    starts = np.random.default_rng([1234, 2]).integers(0, len(TOKENS) - 16 + 1, size=8)
    assert torch.equal(cat(a[2])[:, 0], torch.from_numpy(starts.astype(np.int64)))


def test_data_parallel_slices_concatenate_to_single_process_batch():
    single = take(loader(global_batch_size=8, micro_batch_size=4), 3)
    r0 = take(loader(global_batch_size=8, micro_batch_size=2, rank=0, world_size=2), 3)
    r1 = take(loader(global_batch_size=8, micro_batch_size=2, rank=1, world_size=2), 3)
    for s, a, b in zip(single, r0, r1):
        assert torch.equal(cat(s), torch.cat([cat(a), cat(b)]))
    r4 = [take(loader(micro_batch_size=1, rank=r, world_size=4), 3) for r in range(4)]
    assert torch.equal(cat(single[2]), torch.cat([cat(r[2]) for r in r4]))


def test_resume_from_state_dict_gives_identical_batches():
    straight = take(loader(), 6)
    first = loader()
    for _ in range(3):
        first.next()
    state = first.state_dict()
    first.close()
    assert state["step"] == 3
    resumed = loader()
    resumed.load_state_dict(state)
    rest = take(resumed, 3)
    assert all(torch.equal(cat(x), cat(y)) for x, y in zip(straight[3:], rest))
    # Reloading mid-stream (the prefetch thread ran ahead) rewinds exactly, too.
    ld = loader()
    ld.next(), ld.next(), ld.next()
    ld.load_state_dict({"step": 1})
    assert torch.equal(cat(ld.next()), cat(straight[1]))
    ld.close()
    with pytest.raises(ValueError, match="saved with seed=1234, but this loader has seed=7"):
        loader(seed=7).load_state_dict(state)


def test_close_stops_the_thread():
    ld = loader(prefetch=3)
    ld.next()
    thread = ld._thread
    assert thread.is_alive() and thread.daemon
    ld.close()
    assert not thread.is_alive()
    assert ld.state_dict()["step"] == 1


class Exploding:
    """Token array whose reads fail from the third one on."""
    ndim = 1

    def __init__(self):
        self.reads = 0
        self.lock = threading.Lock()

    def __len__(self):
        return len(TOKENS)

    def __getitem__(self, idx):
        with self.lock:
            self.reads += 1
            if self.reads > 2:
                raise RuntimeError("disk on fire")
        return TOKENS[idx]


def test_thread_exception_is_raised_in_next():
    ld = BatchLoader(Exploding(), seq_len=16, global_batch_size=4, micro_batch_size=4, seed=0)
    ld.next(), ld.next()
    with pytest.raises(RuntimeError, match="disk on fire"):
        ld.next()
    assert ld.state_dict()["step"] == 2
    ld.close()


@pytest.mark.parametrize("kw, message", [
    (dict(global_batch_size=8, micro_batch_size=3), "not divisible by micro_batch_size 3 x data-parallel size 1"),
    (dict(global_batch_size=8, micro_batch_size=2, world_size=3), "not divisible"),
    (dict(seq_len=len(TOKENS)), "fewer than seq_len \\+ 1"),
    (dict(rank=2, world_size=2, micro_batch_size=1), "rank 2 is not in"),
    (dict(micro_batch_size=0), "micro_batch_size must be a positive integer"),
])
def test_bad_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        loader(**kw)


def test_eval_batches_fixed_non_overlapping_in_order():
    batches = eval_batches(TOKENS, seq_len=100, batch_size=4, num_batches=3)
    assert [b.shape for b in batches] == [(4, 100)] * 3
    rows = torch.cat(batches)
    assert torch.equal(rows.flatten(), torch.arange(1200))  # consecutive, from the start
    assert len(eval_batches(TOKENS, seq_len=100, batch_size=4, num_batches=None)) == 25
    assert len(eval_batches(TOKENS, seq_len=100, batch_size=4, num_batches=1000)) == 25
    small = eval_batches(TOKENS[:350], seq_len=100, batch_size=4, num_batches=2)
    assert [b.shape for b in small] == [(3, 100)]  # fewer windows than one batch
    assert eval_batches(TOKENS, seq_len=100, batch_size=4, num_batches=0) == []
    with pytest.raises(ValueError, match="validation split has 50 tokens"):
        eval_batches(TOKENS[:50], seq_len=100, batch_size=4, num_batches=1)


def test_memmap_tokens(tmp_path):
    path = tmp_path / "t.bin"
    TOKENS[:5000].astype(np.uint16).tofile(path)
    mm = np.memmap(path, dtype=np.uint16, mode="r")
    a = take(BatchLoader(mm, seq_len=16, global_batch_size=8, micro_batch_size=8, seed=3), 2)
    b = take(BatchLoader(TOKENS[:5000], seq_len=16, global_batch_size=8, micro_batch_size=8, seed=3), 2)
    assert all(torch.equal(cat(x), cat(y)) for x, y in zip(a, b))
