"""DP variants of fastlm's tensor-parallel layers (see fastlm.privacy.layers for the pattern).

Each rank records the uses of its own shard: a column-parallel weight's rows (its slice of the
output gradient), a row-parallel weight's columns (its slice of the input), a vocabulary-parallel
embedding's rows (its tokens only). The per-sample squared norm of the whole model is then the sum
over the tp ranks of the shards' norms, plus, once, the norms of the replicated parameters
(fastlm.privacy.recorder); a replicated parameter that each rank only gets part of (sequence
parallel norms and biases) has its per-sample gradients summed over the tp ranks first.
"""
from __future__ import annotations

import torch.nn.functional as F

from fastlm.parallel.tensor.collectives import copy_to_tp, gather_from_tp, reduce_from_tp, reduce_scatter_to_sequence
from fastlm.parallel.tensor.embedding import VocabParallelEmbedding
from fastlm.parallel.tensor.head import VocabParallelHead
from fastlm.parallel.tensor.linear import ColumnParallelLinear, RowParallelLinear
from fastlm.privacy.layers import _acc, _autocast, _linear_forward, _per_sample, active_recorder, tap
from fastlm.privacy.per_sample import DenseUse, EmbeddingUse, LinearUse


def _column_forward(module, x, rec):
    if module.input_mode == "replicated":
        x = copy_to_tp(x, module.group)
    y = _linear_forward(module, x, None, rec)
    return gather_from_tp(y, module.group, -1, module.out_features) if module.gather_output else y


class DPColumnParallelLinear(ColumnParallelLinear):
    def forward(self, x):
        rec = active_recorder()
        return super().forward(x) if rec is None else _column_forward(self, x, rec)


class DPVocabParallelHead(VocabParallelHead):
    def forward(self, x):
        rec = active_recorder()
        return super().forward(x) if rec is None else _column_forward(self, x, rec)


class DPRowParallelLinear(RowParallelLinear):
    def forward(self, x):
        rec = active_recorder()
        if rec is None:
            return super().forward(x)
        xc, w = _autocast(x, self.weight.detach())
        x_seen = xc.detach()
        y = tap(F.linear(xc, w), rec,
                lambda g: rec.add(self.weight, LinearUse(_per_sample(x_seen, rec), _per_sample(g, rec))))
        y = reduce_scatter_to_sequence(y, self.group) if self.sequence_parallel else reduce_from_tp(y, self.group)
        if self.bias is None:
            return y
        y = y + self.bias.detach().to(y.dtype)
        return tap(y, rec, lambda g: rec.add(self.bias, DenseUse(_acc(_per_sample(g, rec)).sum(1))))


class DPVocabParallelEmbedding(VocabParallelEmbedding):
    def forward(self, ids):
        rec = active_recorder()
        if rec is None:
            return super().forward(ids)
        outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local = (ids - self.vocab_start).masked_fill(outside, 0)
        out = F.embedding(local, self.weight.detach(), self.local_padding_idx).masked_fill(outside.unsqueeze(-1), 0.0)
        weight = self.weight

        def on_grad(g):
            keep = _per_sample(local[..., None], rec)[..., 0]
            drop = _per_sample(outside[..., None], rec)[..., 0]
            if self.local_padding_idx is not None:
                drop = drop | (keep == self.local_padding_idx)
            rec.add(weight, EmbeddingUse(keep, _per_sample(g, rec) * ~drop[..., None]))

        out = tap(out, rec, on_grad)
        return reduce_from_tp(out, self.group) if self.tp_size > 1 else out


# Most derived first (a VocabParallelHead is a ColumnParallelLinear).
DP_TP_CLASSES = {VocabParallelHead: DPVocabParallelHead, ColumnParallelLinear: DPColumnParallelLinear,
                 RowParallelLinear: DPRowParallelLinear, VocabParallelEmbedding: DPVocabParallelEmbedding}
