"""Batches of token windows: random for training (from a seed and the step), fixed for evaluation.

Training batches are a pure function of (seed, step): step s draws `global_batch_size` window
starts from `np.random.default_rng([seed, s])`, and rank r of `world_size` takes the contiguous
slice [r*G/W, (r+1)*G/W) of them. So the sequences of a step do not depend on the number of
processes (data-parallel runs see the same data as one process), and resuming needs only the
step, which `state_dict()` holds.

DP-SGD's sampling (sampling = "poisson" | "shuffle"): the samples are the disjoint windows
tokens[i * seq_len : (i + 1) * seq_len] (a token belongs to one sample, as the privacy guarantee
needs). "poisson": step s includes each window independently with probability
global_batch_size / num_samples (a variable batch size; a rank may get none); "shuffle": step s
takes the next global_batch_size windows of a seeded permutation of them, one per epoch. The ranks
split a step's windows into contiguous parts, so again the data do not depend on the number of processes.
"""
from __future__ import annotations

import queue
import threading
from typing import NamedTuple

import numpy as np
import torch


def _check_tokens(tokens, seq_len: int, what: str = "tokens") -> None:
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if getattr(tokens, "ndim", 1) != 1:
        raise ValueError(f"{what} must be 1-D, got shape {tuple(tokens.shape)}")
    if len(tokens) < seq_len + 1:
        raise ValueError(f"{what} has {len(tokens)} tokens, fewer than seq_len + 1 = "
                         f"{seq_len + 1}: use a larger corpus or a shorter seq_len")


def _windows(tokens, starts: np.ndarray, seq_len: int) -> torch.Tensor:
    idx = starts[:, None] + np.arange(seq_len)[None, :]
    return torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))


class PackedBatch(NamedTuple):
    """A micro-batch of windows holding several documents each ([data] pack = true).

    cu_seqlens: (n + 1,) int32 offsets of the n documents in the flattened (rows * seq_len) tokens:
    a document ends after each eos token and at each row's end. The model attends within
    documents only and restarts positions at each one.
    """

    input_ids: torch.Tensor
    cu_seqlens: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> "PackedBatch":
        return PackedBatch(self.input_ids.to(device, non_blocking=non_blocking),
                           self.cu_seqlens.to(device, non_blocking=non_blocking))


def pack_documents(batch: torch.Tensor, eos_id: int) -> PackedBatch:
    """The document boundaries of a (rows, seq_len) batch of token windows, as a PackedBatch."""
    rows, seq_len = batch.shape
    flat = batch.reshape(-1)
    after_eos = torch.nonzero(flat == eos_id).flatten() + 1
    row_starts = torch.arange(0, rows * seq_len + 1, seq_len)
    cu = torch.unique(torch.cat([row_starts, after_eos]))  # sorted; eos at a row end adds nothing new
    return PackedBatch(batch, cu.to(torch.int32))


SAMPLINGS = ("random", "poisson", "shuffle")


class _Failure:
    """An exception raised in the prefetch thread, carried to the caller of next()."""

    def __init__(self, exc: BaseException):
        self.exc = exc


class BatchLoader:
    """Deterministic training batches with a background prefetch thread.

    next() returns the micro-batches (LongTensors of shape (micro_batch_size, seq_len)) of this
    rank for the next optimizer step. The labels are the inputs (the model shifts them).
    With pack_eos_id, each micro-batch is a PackedBatch (the same windows plus the document
    boundaries at that eos token), so that no token attends across documents.
    """

    def __init__(self, tokens, *, seq_len: int, global_batch_size: int, micro_batch_size: int,
                 seed: int, rank: int = 0, world_size: int = 1, prefetch: int = 2,
                 pin_memory: bool = False, shares: list[int] | None = None, pack_eos_id: int | None = None,
                 sampling: str = "random", dynamic_shares: bool = False):
        _check_tokens(tokens, seq_len)
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
        if sampling != "random" and shares is not None:
            raise ValueError(f"sampling = {sampling!r} splits each step's windows evenly: no shares")
        for name, v in (("global_batch_size", global_batch_size),
                        ("micro_batch_size", micro_batch_size), ("world_size", world_size)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        # shares (e.g. [3, 1]): rank r takes global_batch_size * shares[r] / sum(shares) sequences.
        self.bounds = _share_bounds(global_batch_size, micro_batch_size, world_size, shares)
        self.shares = None if shares is None else [b - a for a, b in zip(self.bounds, self.bounds[1:])]
        self.dynamic_shares = False  # set_shares was called: the shares are part of the saved state
        if shares is None and not dynamic_shares and global_batch_size % (micro_batch_size * world_size):
            raise ValueError(
                f"global_batch_size {global_batch_size} is not divisible by micro_batch_size "
                f"{micro_batch_size} x data-parallel size {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.tokens = tokens
        self.seq_len = seq_len
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.prefetch = max(0, int(prefetch))
        self.pin_memory = pin_memory
        self.pack_eos_id = pack_eos_id  # not None: micro-batches are PackedBatch (documents split at eos)
        self.sampling = sampling
        if sampling == "shuffle" and global_batch_size > self.num_samples:
            raise ValueError(f"global_batch_size {global_batch_size} is more than the {self.num_samples} windows of "
                             f"{seq_len} tokens in the training data")
        self.step = 0  # the step whose batch next() returns
        self._queue: queue.Queue | None = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        if dynamic_shares:  # fastlm.parallel.dynamic_shares moves them as the ranks' speeds show
            self.set_shares(equal_shares(global_batch_size, world_size))

    # -------------------------------------------------------------- the data

    @property
    def num_samples(self) -> int:
        """Disjoint windows of seq_len tokens: the samples DP-SGD's sampling draws from."""
        return len(self.tokens) // self.seq_len

    @property
    def sample_rate(self) -> float:
        """The probability that a given window is in a step's batch (poisson and shuffle sampling)."""
        return min(1.0, self.global_batch_size / self.num_samples)

    def window_starts(self, step: int) -> np.ndarray:
        """Where this rank's windows of `step` start in the tokens (a pure function of seed, step, rank, world)."""
        if self.sampling != "random":
            windows = self._sampled_windows(step)
            return np.array_split(windows, self.world_size)[self.rank] * self.seq_len
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.tokens) - self.seq_len + 1, size=self.global_batch_size)
        return starts[self.bounds[self.rank]:self.bounds[self.rank + 1]]

    def _sampled_windows(self, step: int) -> np.ndarray:
        n = self.num_samples
        if self.sampling == "poisson":
            return np.flatnonzero(np.random.default_rng([self.seed, step, 1]).random(n) < self.sample_rate)
        per_epoch = n // self.global_batch_size
        epoch, index = divmod(step, per_epoch)
        order = np.random.default_rng([self.seed, epoch, 2]).permutation(n)
        return order[index * self.global_batch_size:(index + 1) * self.global_batch_size]

    def batch_for_step(self, step: int) -> list[torch.Tensor]:
        """This rank's micro-batches of `step` (a pure function of seed, step, rank, world)."""
        batch = _windows(self.tokens, self.window_starts(step), self.seq_len)
        if len(batch) == 0:  # poisson sampling gave this rank nothing: one empty micro-batch
            return [pack_documents(batch, self.pack_eos_id) if self.pack_eos_id is not None else batch]
        if self.pin_memory:
            batch = batch.pin_memory()
        if self.pack_eos_id is not None:
            return [pack_documents(mb, self.pack_eos_id) for mb in batch.split(self.micro_batch_size)]
        return list(batch.split(self.micro_batch_size))

    def next(self) -> list[torch.Tensor]:
        if self.prefetch == 0:
            batch = self.batch_for_step(self.step)
        else:
            if self._thread is None:
                self._start()
            item = self._queue.get()
            if isinstance(item, _Failure):
                self._thread = None  # the thread has ended; a later next() retries
                raise item.exc
            batch = item
        self.step += 1
        return batch

    __next__ = next

    def __iter__(self):
        return self

    # -------------------------------------------------------------- resume

    def set_shares(self, samples: list[int]) -> None:
        """Rank r takes samples[r] sequences of every global batch from the next step on (parallel.dp_shares =
        "dynamic"); any positive integers summing to global_batch_size, the last micro-batch possibly smaller."""
        samples = [int(n) for n in samples]
        if len(samples) != self.world_size or min(samples) < 1 or sum(samples) != self.global_batch_size:
            raise ValueError(f"shares must be {self.world_size} positive sample counts summing to "
                             f"global_batch_size {self.global_batch_size}, got {samples!r}")
        if self.sampling != "random":
            raise ValueError(f"sampling = {self.sampling!r} splits each step's windows evenly: no shares")
        self.close()  # prefetched batches were cut with the old shares
        self.shares, self.dynamic_shares = samples, True
        self.bounds = np.concatenate([[0], np.cumsum(samples)]).tolist()

    def state_dict(self) -> dict:
        state = {"step": self.step, "seed": self.seed, "seq_len": self.seq_len,
                 "global_batch_size": self.global_batch_size, "num_tokens": len(self.tokens)}
        if self.dynamic_shares:
            state["shares"] = list(self.shares)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` (from state_dict()): the next batch is that of state["step"]."""
        for name in ("seed", "seq_len", "global_batch_size", "num_tokens"):
            mine = self.state_dict()[name]
            if name in state and state[name] != mine:
                raise ValueError(f"data position was saved with {name}={state[name]}, "
                                 f"but this loader has {name}={mine}")
        self.close()
        self.step = int(state["step"])
        saved = state.get("shares")
        if self.dynamic_shares and saved is not None and len(saved) == self.world_size:
            self.set_shares(saved)  # the shares the run had reached (another dp size starts equal again)

    # -------------------------------------------------------------- prefetch thread

    def _start(self) -> None:
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(self.step, self._queue, self._stop),
                                        name="fastlm-prefetch", daemon=True)
        self._thread.start()

    def _produce(self, step: int, q: queue.Queue, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                item = self.batch_for_step(step)
            except BaseException as e:  # handed to the consumer, raised by next()
                item = _Failure(e)
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, _Failure):
                return
            step += 1

    def close(self) -> None:
        """Stop the prefetch thread (batches it prepared are dropped; step is unchanged)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
        self._thread = self._queue = self._stop = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def equal_shares(total: int, ranks: int) -> list[int]:
    """`total` samples split as evenly as integers allow (the first ranks take the remainder)."""
    base, extra = divmod(total, ranks)
    return [base + (r < extra) for r in range(ranks)]


def _share_bounds(global_batch_size: int, micro_batch_size: int, world_size: int, shares) -> list[int]:
    """Where each rank's slice of a global batch starts (and the last one ends)."""
    if shares is None:
        per_rank = global_batch_size // world_size
        return [r * per_rank for r in range(world_size + 1)]
    shares = list(shares)
    if len(shares) != world_size or not all(isinstance(s, int) and s >= 1 for s in shares):
        raise ValueError(f"shares must be {world_size} positive integers (one per rank), got {shares!r}")
    bounds, acc = [0], 0
    for s in shares:
        acc += s
        if (global_batch_size * acc) % sum(shares):
            raise ValueError(f"global_batch_size {global_batch_size} does not split into shares {shares}")
        bounds.append(global_batch_size * acc // sum(shares))
    if any((b - a) % micro_batch_size for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"shares {shares} of global_batch_size {global_batch_size} are not whole multiples "
                         f"of micro_batch_size {micro_batch_size}")
    return bounds


def eval_batches(tokens, *, seq_len: int, batch_size: int, num_batches: int | None) -> list[torch.Tensor]:
    """Fixed evaluation batches: consecutive non-overlapping windows from the start, in order.

    Returns `num_batches` full batches of shape (batch_size, seq_len), or fewer if the tokens
    run out (and one smaller batch if there are fewer than batch_size windows).
    num_batches=None: every full batch.
    """
    _check_tokens(tokens, seq_len, "validation split")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if num_batches is not None and num_batches < 1:
        return []
    windows = len(tokens) // seq_len
    full = windows // batch_size
    n = full if num_batches is None else min(int(num_batches), full)
    if n < 1:
        starts = np.arange(windows) * seq_len
        return [_windows(tokens, starts, seq_len)]
    starts = np.arange(n * batch_size) * seq_len
    return list(_windows(tokens, starts, seq_len).split(batch_size))
