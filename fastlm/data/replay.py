"""Replay (continual adaptation): each training batch mixes windows of the original training stream into
the new data, to limit forgetting (train.replay = 0.1: 10% of every global batch).

    loader = ReplayBatchLoader(new_tokens, old_tokens, replay=0.1, seq_len=..., global_batch_size=..., ...)

Step s keeps BatchLoader's draw for the new data and replaces round(replay * global_batch_size) slots,
chosen from (seed, s), by windows of the old tokens; so batches stay a pure function of (seed, step)
and the ranks' slices of a global batch are the same whatever the number of processes.
"""
from __future__ import annotations

import numpy as np

from fastlm.data.loader import BatchLoader, _check_tokens
from fastlm.data.shards import TokenShards


class ReplayBatchLoader(BatchLoader):
    def __init__(self, tokens, replay_tokens, *, replay: float, seq_len: int, global_batch_size: int, **kwargs):
        if not 0 <= replay < 1:
            raise ValueError(f"replay must be in [0, 1), got {replay!r}")
        if kwargs.get("sampling", "random") != "random":
            raise ValueError("replay mixes randomly drawn windows: sampling must be \"random\"")
        _check_tokens(tokens, seq_len)
        _check_tokens(replay_tokens, seq_len, "the replayed (original) training tokens")
        super().__init__(TokenShards([tokens, replay_tokens]), seq_len=seq_len, global_batch_size=global_batch_size,
                         **kwargs)
        self.replay = replay
        self.replay_per_batch = int(round(replay * global_batch_size))

    def replay_slots(self, step: int) -> np.ndarray:
        """Which of step's global_batch_size windows come from the original stream (a sorted index array)."""
        rng = np.random.default_rng([self.seed, step, 3])
        return np.sort(rng.choice(self.global_batch_size, size=self.replay_per_batch, replace=False))

    def window_starts(self, step: int) -> np.ndarray:
        n_new, n_old = (len(part) for part in self.tokens.parts)  # the new tokens, then the original stream
        starts = np.random.default_rng([self.seed, step]).integers(0, n_new - self.seq_len + 1,
                                                                   size=self.global_batch_size)
        slots = self.replay_slots(step)
        old = np.random.default_rng([self.seed, step, 4]).integers(0, n_old - self.seq_len + 1, size=len(slots))
        starts[slots] = n_new + old
        return starts[self.bounds[self.rank]:self.bounds[self.rank + 1]]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "replay": self.replay}
