"""Training batches for stateful (truncated-BPTT) recurrent models: consecutive windows of long streams.

    loader = StreamLoader(tokens, seq_len=..., global_batch_size=..., micro_batch_size=..., rank=r, world_size=w)

The training tokens are cut into world_size * micro_batch_size contiguous streams of equal length;
rank r owns streams [r * micro_batch_size, (r + 1) * micro_batch_size), row i of each of its
micro-batches reads stream r * micro_batch_size + i, and each micro-batch is the next window of every
stream (non-overlapping windows of seq_len tokens, back to the stream's start after its last whole
window). So row i of micro-batch m + 1 continues row i of micro-batch m, which is what a model carrying
its state across micro-batches needs (fastlm.models.RecurrentLM with stateful=True). The windows are
a pure function of (step, rank, world size), so resume needs only the step (BatchLoader.state_dict).
"""
from __future__ import annotations

import numpy as np

from fastlm.data.loader import BatchLoader


class StreamLoader(BatchLoader):
    """BatchLoader whose windows continue each other row by row (see the module docstring)."""

    def __init__(self, tokens, **kwargs):
        if kwargs.get("pack_eos_id") is not None:
            raise ValueError("StreamLoader: packed documents (pack_eos_id) do not apply to streams")
        super().__init__(tokens, **kwargs)
        streams = self.world_size * self.micro_batch_size
        self.stream_len = len(self.tokens) // streams
        if self.stream_len < self.seq_len:
            raise ValueError(f"StreamLoader: {len(self.tokens)} tokens make {streams} streams of {self.stream_len} "
                             f"tokens, shorter than seq_len = {self.seq_len}")
        self.windows_per_stream = self.stream_len // self.seq_len
        first = self.rank * self.micro_batch_size
        self.stream_starts = (first + np.arange(self.micro_batch_size)) * self.stream_len
        self.micro_batches_per_step = (self.bounds[self.rank + 1] - self.bounds[self.rank]) // self.micro_batch_size

    def window_starts(self, step: int) -> np.ndarray:
        """This rank's window starts of `step`: micro-batch after micro-batch, row i in stream i."""
        first = step * self.micro_batches_per_step
        index = (first + np.arange(self.micro_batches_per_step)) % self.windows_per_stream
        return (index[:, None] * self.seq_len + self.stream_starts[None, :]).reshape(-1)
