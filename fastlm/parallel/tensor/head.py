"""VocabParallelHead: an LM head (or MLM decoder) split over the vocabulary.

A column-parallel linear whose output is this rank's slice of the logits. It tells the model how
to take the loss of that slice (fastlm.nn.head): the vocab-parallel cross-entropy, which never
gathers the full logits; and it refuses to stand in for full logits (sampling needs them all).
"""
from __future__ import annotations

import torch

from fastlm.parallel.tensor.cross_entropy import vocab_parallel_cross_entropy
from fastlm.parallel.tensor.linear import ColumnParallelLinear


class VocabParallelHead(ColumnParallelLinear):
    def logits_cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of this rank's (N, V / tp) logits against (N,) targets, -100 ignored."""
        return vocab_parallel_cross_entropy(logits, targets, group=self.group, vocab_start=self.out_start)

    def check_full_logits(self) -> None:
        raise NotImplementedError(
            "sampling from a tensor-parallel model: its logits are split over the vocabulary; load the weights "
            "into a plain GPT (fastlm.parallel.tensor.checkpoint.full_state_dict, or `fastlm generate RUN_DIR` "
            "on one process)")
