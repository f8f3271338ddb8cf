"""How tensors are split over the tp ranks, and which model shapes a tp size can split.

A tensor-parallel parameter carries `_tp_parts`: the pieces of "canonical" tensors (those of the
plain, unsplit model) it holds. Fused projections hold several: qkv holds this rank's rows of q,
of k and of v; a gated MLP's fc its rows of gate and of up. Checkpoints store canonical tensors
(`blocks.0.attn.qkv.weight[q]`, ...), so a checkpoint saved at one tp size loads at any other.
"""
from __future__ import annotations

from dataclasses import dataclass

from fastlm.parallel.tensor.collectives import chunk_range


@dataclass(frozen=True)
class Part:
    target: str          # canonical name within the module: "weight", "weight[q]", "bias[up]"
    dim: int             # the dim along which the pieces are laid out (and split)
    local_start: int     # where this piece starts in the local parameter, along dim
    local_len: int
    global_offset: int   # where this rank's piece starts in the canonical tensor, along dim
    global_len: int      # the canonical tensor's size along dim

    @property
    def sharded(self) -> bool:
        return self.local_len < self.global_len


def split_parts(names_sizes: list[tuple[str | None, int]], kind: str, dim: int, tp: int, rank: int) -> list[Part]:
    """Parts of a parameter made of canonical tensors `names_sizes` concatenated along dim, each split over tp."""
    parts, local = [], 0
    for name, size in names_sizes:
        start, end = chunk_range(size, tp, rank)
        parts.append(Part(f"{kind}[{name}]" if name else kind, dim, local, end - start, start, size))
        local += end - start
    return parts


def canonical_key(param_name: str, part: Part) -> str:
    """`blocks.0.attn.qkv.weight` + Part("weight[q]") -> `blocks.0.attn.qkv.weight[q]`."""
    module = param_name.rsplit(".", 1)[0] if "." in param_name else ""
    return f"{module}.{part.target}" if module else part.target


def check_tp_layout(config, tp: int, sequence_parallel: bool = False, seq_len: int | None = None) -> None:
    """Raise ValueError naming what must divide what when the model cannot be split over tp ranks."""
    c = config.resolved() if hasattr(config, "resolved") else config
    if not isinstance(tp, int) or tp < 1:
        raise ValueError(f"parallel.tp = {tp!r}: expected a positive integer")
    if tp == 1:
        return
    if c.n_head % tp:
        raise ValueError(f"parallel.tp = {tp} does not divide model.n_head = {c.n_head}: every tp rank must hold "
                         f"the same whole number of attention heads (choose a tp that divides {c.n_head})")
    n_kv_head = getattr(c, "n_kv_head", c.n_head)  # encoders: multi-head attention
    if n_kv_head % tp and tp % n_kv_head:
        raise ValueError(f"parallel.tp = {tp} and model.n_kv_head = {n_kv_head}: one must divide the other "
                         f"(kv heads are split over the tp ranks, or each is replicated on tp / n_kv_head ranks)")
    if c.d_ff % tp:
        raise ValueError(f"parallel.tp = {tp} does not divide model.d_ff = {c.d_ff}: the MLP is split "
                         f"column-then-row into equal slices")
    if -(-c.vocab_size // tp) * (tp - 1) >= c.vocab_size:
        raise ValueError(f"model.vocab_size = {c.vocab_size} is too small to split over parallel.tp = {tp}: "
                         f"ceil(vocab_size / tp) rows per rank would leave the last rank none")
    if sequence_parallel and seq_len is not None and seq_len % tp:
        raise ValueError(f"parallel.tp = {tp} does not divide the sequence length {seq_len}: sequence parallel "
                         f"splits every sequence into tp equal parts")
