"""parallelize_tp: split a built plain GPT or encoder over the tp ranks of a mesh (the torchtitan way).

    model = GPT(config)                     # the same seed on every rank: the full model
    model = parallelize_tp(model, mesh, sequence_parallel=True)
    model = DataParallel(model, mesh)       # dp over mesh.dp_group composes on top

Each block's attention splits its heads (qkv column-parallel with q/k/v split separately, kv heads
replicated when there are fewer than tp ranks; proj row-parallel), the MLP is split
column-then-row (a gated fc [gate | up] so that every rank gets matching gate and up rows), the
token embedding and the LM head are split over the vocabulary (tied weights stay one tensor) and
the loss is the vocab-parallel cross-entropy. Shard i is slice i of the full weights. The
model's logits (forward without labels) are this rank's vocabulary slice.

LoRA adapters (fastlm.nn.lora, applied before) split along their base layer (fastlm.parallel.tensor.lora):
A whole and B split for the column-parallel qkv / fc, A split and B whole for the row-parallel proj; the
frozen base stays frozen (the split layers' new parameters keep the requires_grad of those they replace).

Sequence parallel: the residual stream (and norms, dropout) hold 1/tp of every sequence; each
norm's output is all-gathered along the sequence before the column-parallel layers, and the
row-parallel outputs are reduce-scattered back. Norm weights (and the row-parallel biases) see
only their shard of the sequence, so their gradients are summed over the tp ranks.

Encoders (Encoder, EncoderForMaskedLM, EncoderForSequenceClassification: BERT, RoBERTa, ALBERT)
split the same way: their blocks like GPT's, the word embedding and the MLM decoder (tied to it,
with its bias split alike) over the vocabulary, the MLM loss vocab-parallel. Position and
token-type embeddings, LayerNorms, ALBERT's embedding projection, the MLM head's dense layer, the
pooler and the classifier heads stay replicated. ALBERT's shared blocks are split once (the same
Block runs at several layers). Sequence parallel is not available for encoders: a padded batch
runs as one packed varlen sequence of its real tokens, whose length need not divide tp.
"""
from __future__ import annotations

import torch
from torch import nn

from fastlm.parallel.tensor.collectives import gather_from_sequence, scatter_to_sequence
from fastlm.parallel.tensor.embedding import VocabParallelEmbedding
from fastlm.parallel.tensor.head import VocabParallelHead
from fastlm.parallel.tensor.layout import check_tp_layout
from fastlm.parallel.tensor.linear import (
    ColumnParallelLinear,
    GQAColumnParallelLinear,
    RowParallelLinear,
    sum_grad_over_tp,
)
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
    """Split `model` (a fastlm GPT or encoder) in place over mesh.tp_group; returns it.

    mesh: a fastlm Mesh (or anything with tp, tp_rank, tp_group). seed: of the dropout generators
    (default: torch.initial_seed(), the seed the model was built with).
    """
    from fastlm.models import GPT
    from fastlm.nn import LayerNorm, RMSNorm

    trunk, head_owner, head_name = _parts_to_split(model)
    if getattr(model, "tp_size", 1) > 1:
        raise ValueError("parallelize_tp: the model is already tensor-parallel")
    tp, group = mesh.tp, mesh.tp_group
    cfg = model.config
    if sequence_parallel and tp > 1 and not isinstance(model, GPT):
        raise ValueError("parallelize_tp: sequence_parallel is not available for encoders (a padded batch runs as "
                         "one packed sequence of its real tokens, whose length need not divide tp); "
                         "use tensor parallelism without it")
    check_tp_layout(cfg, tp, sequence_parallel)
    if tp == 1:
        return model
    sp = bool(sequence_parallel)
    device = next(model.parameters()).device
    tracker = RNGTracker(torch.initial_seed() if seed is None else seed, mesh.tp_rank, device)
    stream = "sharded" if sp else "replicated"  # the residual stream's dropout region
    column_input = "gathered" if sp else "replicated"

    before = {name: p.requires_grad for name, p in model.named_parameters()}
    for block in trunk.blocks:  # ALBERT: each shared block once
        _split_block(block, group, tp, column_input, sp, tracker, stream)

    if head_owner is not None:  # the LM head (GPT) or MLM decoder: vocab-parallel, like the embedding
        head = getattr(head_owner, head_name)
        tied = head.weight is trunk.tok_emb.weight
        _check_linear(head, head_name)
        # The head brings the vocab-parallel cross-entropy its slice of the logits needs (fastlm.nn.head).
        head = VocabParallelHead.from_linear(head, group=group, input_mode=column_input)
        setattr(head_owner, head_name, head)
    trunk.tok_emb = VocabParallelEmbedding.from_embedding(trunk.tok_emb, group=group)
    if head_owner is not None and tied:
        head.weight = trunk.tok_emb.weight

    if sp:
        trunk.drop = SequenceScatter(group, _dropout(trunk.drop, tracker, "sharded")
                                     if isinstance(trunk.drop, nn.Dropout) else None)
        norms = [m for m in model.modules() if isinstance(m, (LayerNorm, RMSNorm))]
        for norm in norms:  # each one feeds a column-parallel layer (or the LM head): gather its output
            norm.register_forward_hook(_gather_output_hook(group))
            for p in norm.parameters():
                sum_grad_over_tp(p, group)
    else:
        trunk.drop = _dropout(trunk.drop, tracker, "replicated")
    if trunk is not model and isinstance(getattr(model, "drop", None), nn.Dropout):  # a classifier's input
        model.drop = _dropout(model.drop, tracker, "replicated")

    _keep_frozen(model, before)
    model.tp_size, model.tp_group, model.sequence_parallel, model.tp_rng = tp, group, sp, tracker
    reseed_default_per_tp_rank(mesh.tp_rank)
    return model


def _keep_frozen(model: nn.Module, before: dict[str, bool]) -> None:
    """The split layers' new parameters train as the ones they replace did (LoRA: the base stays frozen);
    a new name (GQA's kv_weight) follows its module's weight, adapters always train."""
    for name, p in model.named_parameters():
        module = name.rpartition(".")[0]
        if ".lora_" not in "." + name:
            p.requires_grad_(before.get(name, before.get(f"{module}.weight", True)))


def _split_block(block: nn.Module, group, tp: int, column_input: str, sp: bool, tracker: RNGTracker,
                 stream: str) -> None:
    """Split one block's attention heads and MLP over the tp ranks (stream: the residual stream's dropout
    region). LoRA adapters split along their base (fastlm.parallel.tensor.lora)."""
    from fastlm.nn import MLP, Attention
    from fastlm.nn.lora import Int8LoRALinear, LoRALinear
    from fastlm.parallel.tensor.lora import (
        ColumnParallelInt8LoRALinear,
        ColumnParallelLoRALinear,
        GQAColumnParallelLoRALinear,
        RowParallelInt8LoRALinear,
        RowParallelLoRALinear,
    )

    def dropout(m: nn.Module, region: str = stream) -> nn.Module:
        return _dropout(m, tracker, region)

    def split(layer: nn.Module, plain, adapted, region: str, **kwargs) -> nn.Module:
        if isinstance(layer, Int8LoRALinear):  # an int8 base (model.lora.base = "int8")
            if adapted is GQAColumnParallelLoRALinear:
                raise ValueError(f"an int8 LoRA base with fewer kv heads ({attn.n_kv_head}) than tp ranks ({tp}) "
                                 f"is not split yet (use a float base, or tp <= n_kv_head)")
            int8 = ColumnParallelInt8LoRALinear if adapted is ColumnParallelLoRALinear else RowParallelInt8LoRALinear
            return int8.from_lora(layer, dropout(layer.lora_dropout, region), **kwargs)
        if isinstance(layer, LoRALinear):  # the adapter's input: whole on every rank (column) or split (row)
            return adapted.from_lora(layer, dropout(layer.lora_dropout, region), **kwargs)
        return plain.from_linear(layer, **kwargs)

    attn, mlp = block.attn, block.mlp
    if not (isinstance(attn, Attention) and isinstance(mlp, MLP)):
        raise TypeError(f"parallelize_tp: a block's attn/mlp are {type(attn).__name__}/{type(mlp).__name__}, "
                        f"expected fastlm.nn Attention/MLP")
    n_q, n_kv, hd = attn.n_head * attn.head_dim, attn.n_kv_head * attn.head_dim, attn.head_dim
    _check_linear(attn.qkv, "attn.qkv")
    if attn.n_kv_head % tp == 0:
        attn.qkv = split(attn.qkv, ColumnParallelLinear, ColumnParallelLoRALinear, "replicated", group=group,
                         input_mode=column_input, parts=[("q", n_q), ("k", n_kv), ("v", n_kv)])
        local_kv = attn.n_kv_head // tp
    else:  # fewer kv heads than ranks: each rank computes the one its q heads use
        attn.qkv = split(attn.qkv, GQAColumnParallelLinear, GQAColumnParallelLoRALinear, "replicated",
                         n_head=attn.n_head, n_kv_head=attn.n_kv_head, head_dim=hd, group=group,
                         input_mode=column_input)
        local_kv = 1
    _check_linear(attn.proj, "attn.proj")
    attn.proj = split(attn.proj, RowParallelLinear, RowParallelLoRALinear, "sharded", group=group,
                      sequence_parallel=sp)
    attn.n_head, attn.n_kv_head = attn.n_head // tp, local_kv
    attn.resid_drop = dropout(attn.resid_drop)

    _check_linear(mlp.fc, "mlp.fc")
    parts = [("gate", mlp.d_ff), ("up", mlp.d_ff)] if mlp.gated else None
    mlp.fc = split(mlp.fc, ColumnParallelLinear, ColumnParallelLoRALinear, "replicated", group=group,
                   input_mode=column_input, parts=parts)
    _check_linear(mlp.proj, "mlp.proj")
    mlp.proj = split(mlp.proj, RowParallelLinear, RowParallelLoRALinear, "sharded", group=group,
                     sequence_parallel=sp)
    mlp.d_ff //= tp
    mlp.drop = dropout(mlp.drop)


def _parts_to_split(model: nn.Module) -> tuple[nn.Module, nn.Module | None, str | None]:
    """(the module holding tok_emb, blocks and drop; the module holding the vocabulary head, its attribute
    name) of a GPT or an encoder; the head is None for encoders without an MLM head."""
    from fastlm.models import GPT, Encoder, EncoderForMaskedLM, EncoderForSequenceClassification

    if isinstance(model, GPT):
        return model, model, "lm_head"
    if isinstance(model, Encoder):
        return model, None, None
    if isinstance(model, EncoderForMaskedLM):
        return model.encoder, model.mlm_head, "decoder"
    if isinstance(model, EncoderForSequenceClassification):
        return model.encoder, None, None
    raise TypeError(f"parallelize_tp: expected a fastlm GPT or encoder (Encoder, EncoderForMaskedLM, "
                    f"EncoderForSequenceClassification), got {type(model).__name__}")


def _check_linear(module: nn.Module, name: str) -> None:
    from fastlm.nn.lora import Int8LoRALinear

    if not isinstance(module, (nn.Linear, Int8LoRALinear)):  # (a LoRA int8 base splits too)
        raise TypeError(f"parallelize_tp: {name} is a {type(module).__name__}; expected an nn.Linear "
                        f"(apply parallelize_tp before other module swaps)")


def is_tp_sharded(param: torch.Tensor) -> bool:
    """Does the parameter hold only this rank's slice of something (vs. a full replicated tensor)?"""
    return any(p.sharded for p in getattr(param, "_tp_parts", ()))
