"""parallelize_tp: split a built plain GPT over the tp ranks of a mesh (the torchtitan way).

    model = GPT(config)                     # the same seed on every rank: the full model
    model = parallelize_tp(model, mesh, sequence_parallel=True)
    model = DataParallel(model, mesh)       # dp over mesh.dp_group composes on top

Each block's attention splits its heads (qkv column-parallel with q/k/v split separately, kv heads
replicated when there are fewer than tp ranks; proj row-parallel), the MLP is split
column-then-row (a gated fc [gate | up] so that every rank gets matching gate and up rows), the
token embedding and the LM head are split over the vocabulary (tied weights stay one tensor) and
the loss is the vocab-parallel cross-entropy. Shard i is slice i of the full weights. The
model's logits (forward without labels) are this rank's vocabulary slice.

Sequence parallel: the residual stream (and norms, dropout) hold 1/tp of every sequence; each
norm's output is all-gathered along the sequence before the column-parallel layers, and the
row-parallel outputs are reduce-scattered back. Norm weights (and the row-parallel biases) see
only their shard of the sequence, so their gradients are summed over the tp ranks.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from fastlm.parallel.tensor.collectives import gather_from_sequence, scatter_to_sequence
from fastlm.parallel.tensor.cross_entropy import vocab_parallel_cross_entropy
from fastlm.parallel.tensor.embedding import VocabParallelEmbedding
from fastlm.parallel.tensor.layout import check_tp_layout
from fastlm.parallel.tensor.linear import (ColumnParallelLinear, GQAColumnParallelLinear, RowParallelLinear,
                                           sum_grad_over_tp)
from fastlm.parallel.tensor.random import RNGTracker, TPDropout, reseed_default_per_tp_rank


class SequenceScatter(nn.Module):
    """Sequence parallel entry (after the embeddings): keep this rank's part of the sequence, then dropout."""

    def __init__(self, group, dropout: nn.Module | None):
        super().__init__()
        self.group, self.dropout = group, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = scatter_to_sequence(x, self.group)
        return self.dropout(x) if self.dropout is not None else x


def _gather_output_hook(group):
    def hook(module, args, output):
        return gather_from_sequence(output, group)
    return hook


def _dropout(module: nn.Module, tracker: RNGTracker, region: str) -> nn.Module:
    return TPDropout(module.p, tracker, region) if isinstance(module, nn.Dropout) and module.p > 0 else module


def parallelize_tp(model: nn.Module, mesh, sequence_parallel: bool = False, seed: int | None = None) -> nn.Module:
    """Split `model` (a fastlm GPT) in place over mesh.tp_group; returns it.

    mesh: a fastlm Mesh (or anything with tp, tp_rank, tp_group). seed: of the dropout generators
    (default: torch.initial_seed(), the seed the model was built with).
    """
    from fastlm.models import GPT
    from fastlm.nn import MLP, Attention, LayerNorm, RMSNorm

    if not isinstance(model, GPT):
        raise TypeError(f"parallelize_tp: expected a fastlm GPT, got {type(model).__name__}")
    if getattr(model, "tp_size", 1) > 1:
        raise ValueError("parallelize_tp: the model is already tensor-parallel")
    tp, group = mesh.tp, mesh.tp_group
    cfg = model.config
    check_tp_layout(cfg, tp, sequence_parallel)
    if tp == 1:
        return model
    sp = bool(sequence_parallel)
    device = next(model.parameters()).device
    tracker = RNGTracker(torch.initial_seed() if seed is None else seed, mesh.tp_rank, device)
    stream = "sharded" if sp else "replicated"  # the residual stream's dropout region
    column_input = "gathered" if sp else "replicated"

    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        if not (isinstance(attn, Attention) and isinstance(mlp, MLP)):
            raise TypeError(f"parallelize_tp: a block's attn/mlp are {type(attn).__name__}/{type(mlp).__name__}, "
                            f"expected fastlm.nn Attention/MLP")
        n_q, n_kv, hd = attn.n_head * attn.head_dim, attn.n_kv_head * attn.head_dim, attn.head_dim
        _check_linear(attn.qkv, "attn.qkv")
        if attn.n_kv_head % tp == 0:
            attn.qkv = ColumnParallelLinear.from_linear(attn.qkv, group=group, input_mode=column_input,
                                                        parts=[("q", n_q), ("k", n_kv), ("v", n_kv)])
            local_kv = attn.n_kv_head // tp
        else:  # fewer kv heads than ranks: each rank computes the one its q heads use
            attn.qkv = GQAColumnParallelLinear.from_linear(attn.qkv, n_head=attn.n_head, n_kv_head=attn.n_kv_head,
                                                           head_dim=hd, group=group, input_mode=column_input)
            local_kv = 1
        _check_linear(attn.proj, "attn.proj")
        attn.proj = RowParallelLinear.from_linear(attn.proj, group=group, sequence_parallel=sp)
        attn.n_head, attn.n_kv_head = attn.n_head // tp, local_kv
        attn.resid_drop = _dropout(attn.resid_drop, tracker, stream)

        _check_linear(mlp.fc, "mlp.fc")
        parts = [("gate", mlp.d_ff), ("up", mlp.d_ff)] if mlp.gated else None
        mlp.fc = ColumnParallelLinear.from_linear(mlp.fc, group=group, input_mode=column_input, parts=parts)
        _check_linear(mlp.proj, "mlp.proj")
        mlp.proj = RowParallelLinear.from_linear(mlp.proj, group=group, sequence_parallel=sp)
        mlp.d_ff //= tp
        mlp.drop = _dropout(mlp.drop, tracker, stream)

    tied = model.lm_head.weight is model.tok_emb.weight
    model.tok_emb = VocabParallelEmbedding.from_embedding(model.tok_emb, group=group)
    _check_linear(model.lm_head, "lm_head")
    model.lm_head = ColumnParallelLinear.from_linear(model.lm_head, group=group, input_mode=column_input)
    if tied:
        model.lm_head.weight = model.tok_emb.weight
    model.loss_fn = functools.partial(vocab_parallel_cross_entropy, group=group,
                                      vocab_start=model.lm_head.out_start)

    if sp:
        model.drop = SequenceScatter(group, _dropout(model.drop, tracker, "sharded")
                                     if isinstance(model.drop, nn.Dropout) else None)
        norms = [m for m in model.modules() if isinstance(m, (LayerNorm, RMSNorm))]
        for norm in norms:  # each one feeds a column-parallel layer (or the LM head): gather its output
            norm.register_forward_hook(_gather_output_hook(group))
            for p in norm.parameters():
                sum_grad_over_tp(p, group)
    else:
        model.drop = _dropout(model.drop, tracker, "replicated")

    model.tp_size, model.tp_group, model.sequence_parallel, model.tp_rng = tp, group, sp, tracker
    model.generate = _no_generate  # its logits are vocabulary slices: sampling from them would be wrong
    reseed_default_per_tp_rank(mesh.tp_rank)
    return model


def _no_generate(*args, **kwargs):
    raise NotImplementedError("generate on a tensor-parallel model: its logits are split over the vocabulary; "
                              "load the weights into a plain GPT (fastlm.parallel.tensor.checkpoint.full_state_dict, "
                              "or `fastlm generate RUN_DIR` on one process)")


def _check_linear(module: nn.Module, name: str) -> None:
    if not isinstance(module, nn.Linear):
        raise TypeError(f"parallelize_tp: {name} is a {type(module).__name__}; expected an nn.Linear "
                        f"(apply parallelize_tp before other module swaps)")


def is_tp_sharded(param: torch.Tensor) -> bool:
    """Does the parameter hold only this rank's slice of something (vs. a full replicated tensor)?"""
    return any(p.sharded for p in getattr(param, "_tp_parts", ()))
