"""Split a built GPT into pipeline stages of consecutive blocks.

    layers = partition_layers(costs, num_stages)            # [(start, end), ...] per stage
    module = PipelineStage(gpt, stage_ranges, stages=[r, pp + r])   # what one rank holds

A PipelineStage keeps the GPT's module names (tok_emb, pos_emb, blocks.<i>, norm, lm_head), so its
state_dict keys are a subset of the whole model's: checkpoints reshard between layouts by name.
The first stage holds the embeddings, the last the final norm and the head (the loss is computed
there). With tied embeddings and the two on different ranks, the last stage holds its own copy of
the embedding matrix as lm_head.weight; the pipeline sums the two copies' gradients every step
so they stay equal (they start equal and take the same optimizer steps).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from fastlm import ops
from fastlm.models.gpt import GPT, document_positions
from fastlm.nn import rope_cos_sin

BALANCES = ("params", "time")


def partition_layers(costs: list[float], num_stages: int, first_extra: float = 0.0,
                     last_extra: float = 0.0) -> list[int]:
    """Layers per stage (each >= 1) of consecutive layers minimizing the largest stage cost.

    costs: one per layer; first_extra / last_extra: the cost the first / last stage carries besides
    its layers (embeddings; norm, head and loss). Exact (dynamic programming over split points)."""
    n = len(costs)
    if num_stages > n:
        raise ValueError(f"pipeline: {num_stages} stages (pp x virtual_stages) but the model has only {n} "
                         f"layers; every stage needs at least one layer")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)

    def cost(stage: int, a: int, b: int) -> float:
        return prefix[b] - prefix[a] + (first_extra if stage == 0 else 0.0) + \
            (last_extra if stage == num_stages - 1 else 0.0)

    # best[s][i]: the smallest max-cost of putting layers [0, i) on stages [0, s)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(num_stages + 1)]
    cut = [[0] * (n + 1) for _ in range(num_stages + 1)]
    best[0][0] = 0.0
    for s in range(1, num_stages + 1):
        for i in range(s, n - (num_stages - s) + 1):
            for j in range(s - 1, i):
                value = max(best[s - 1][j], cost(s - 1, j, i))
                if value < best[s][i] - 1e-12:
                    best[s][i], cut[s][i] = value, j
    counts, i = [], n
    for s in range(num_stages, 0, -1):
        j = cut[s][i]
        counts.append(i - j)
        i = j
    return counts[::-1]


def check_stage_layers(stage_layers: list[int], n_layer: int, num_stages: int) -> None:
    if len(stage_layers) != num_stages:
        raise ValueError(f"parallel.stage_layers = {stage_layers}: expected {num_stages} entries (pp x "
                         f"virtual_stages), one per pipeline stage")
    if any(c < 1 for c in stage_layers) or sum(stage_layers) != n_layer:
        raise ValueError(f"parallel.stage_layers = {stage_layers}: expected positive layer counts that add up to "
                         f"model.n_layer = {n_layer}")


def param_costs(model: GPT) -> tuple[list[float], float, float]:
    """Cost by parameter count: per block, the embeddings (first stage), norm + head (last stage)."""
    per_layer = [float(sum(p.numel() for p in b.parameters())) for b in model.blocks]
    first = float(model.tok_emb.weight.numel() + (model.pos_emb.weight.numel() if model.pos_emb is not None else 0))
    last = float(sum(p.numel() for p in model.norm.parameters()) + model.lm_head.weight.numel())
    return per_layer, first, last


def measured_costs(model: GPT, batch_size: int, seq_len: int, repeats: int = 5) -> tuple[list[float], float, float]:
    """Cost by measured forward + backward time of every block, the embeddings and the head (seconds).

    Each piece is timed `repeats` times in interleaved rounds (so all see the same machine load) and
    its fastest time counts. Ranks measure different numbers: the caller must agree on one set
    (the pipeline broadcasts rank 0's)."""
    import time

    device = model.tok_emb.weight.device
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), device=device)
    positions = torch.arange(seq_len, device=device)
    rope = None if model.pos_emb is not None else rope_cos_sin(positions, model.config.head_dim,
                                                               model.config.rope_theta)
    x = model.tok_emb(ids).detach()
    pieces = [lambda: model.tok_emb(ids)] + [lambda b=b: b(x.requires_grad_(), rope) for b in model.blocks] + \
             [lambda: model.lm_head(model.norm(x.requires_grad_()))]
    best = [float("inf")] * len(pieces)
    for round_ in range(repeats + 1):  # round 0 warms up
        for i, piece in enumerate(pieces):
            t0 = time.perf_counter()
            piece().float().sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_:
                best[i] = min(best[i], time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    # Blocks of the same structure cost the same: each gets the median of its kind (timing noise
    # on a busy machine would otherwise move layers between stages from run to run).
    per_layer = best[1:-1]
    kinds: dict = {}
    for i, block in enumerate(model.blocks):
        kinds.setdefault(tuple((type(m).__name__, tuple(p.shape)) for m in block.modules()
                               for p in m.parameters(recurse=False)), []).append(i)
    for members in kinds.values():
        median = sorted(per_layer[i] for i in members)[len(members) // 2]
        for i in members:
            per_layer[i] = median
    return per_layer, best[0], best[-1]


class PipelineStage(nn.Module):
    """The part of a GPT one pipeline rank holds: one or more chunks (virtual stages) of blocks.

    stage_layers: the number of blocks of every stage of the whole pipeline; stages: the stage
    indices this rank holds (chunk c is stages[c]). forward_chunk(c, x, ...) runs one chunk: on
    the first stage x is input_ids, elsewhere the hidden states; the last stage returns logits.
    """

    def __init__(self, model: GPT, stage_layers: list[int], stages: list[int]):
        super().__init__()
        num_stages = len(stage_layers)
        check_stage_layers(stage_layers, model.config.n_layer, num_stages)
        self.config = model.config
        self.stage_layers = list(stage_layers)
        self.stages = list(stages)
        self.num_stages = num_stages
        self.activation_checkpointing = model.activation_checkpointing
        for name in ("tp_size", "tp_group", "sequence_parallel", "tp_rng"):  # set by parallelize_tp
            if name in vars(model):
                setattr(self, name, getattr(model, name))
        self._total_params = model.num_params()
        starts = [sum(stage_layers[:s]) for s in range(num_stages)]
        self.chunk_layers = [list(range(starts[s], starts[s] + stage_layers[s])) for s in stages]
        self.has_first = 0 in stages
        self.has_last = num_stages - 1 in stages
        self.tied = bool(model.config.tie_embeddings)

        if self.has_first:
            self.tok_emb = model.tok_emb
            self.pos_emb = model.pos_emb
            self.drop = model.drop
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for layers in self.chunk_layers for i in layers})
        if self.has_last:
            if self.tied and not self.has_first:
                # The head's weight is the embedding matrix: the last stage keeps its own copy under
                # the same name (tok_emb.weight, never looked up here), so checkpoints, the optimizer
                # (no weight decay: the embedding is registered first, so it owns the weight) and
                # state dicts see the tied model; the pipeline sums the two copies' gradients every
                # step, so they stay equal.
                self.tok_emb = model.tok_emb
            self.norm = model.norm
            self.lm_head = model.lm_head
            # (N, V) logits, (N,) targets -> mean loss; vocab-parallel under tensor parallelism
            self.loss_fn = model.loss_fn
            # The head and the loss fused (no logits stored) exactly when GPT.forward fuses them
            self.fused_loss = model._fused_loss_applies()

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """The whole model's parameter count (what the run reports), not this rank's part."""
        return self._total_params

    def tied_weight(self) -> nn.Parameter | None:
        """The copy of a tied embedding this rank holds when the first and last stage are on different ranks."""
        if not self.tied or self.has_first == self.has_last:
            return None
        return self.tok_emb.weight

    def is_first_stage(self, chunk: int) -> bool:
        return self.stages[chunk] == 0

    def is_last_stage(self, chunk: int) -> bool:
        return self.stages[chunk] == self.num_stages - 1

    def positions(self, input_ids_shape, cu_seqlens, device):
        b, t = input_ids_shape
        if cu_seqlens is not None:
            return document_positions(cu_seqlens, b * t)
        return torch.arange(t, device=device), None

    def forward_chunk(self, chunk: int, x: torch.Tensor, input_ids_shape, cu_seqlens=None, labels=None,
                      fused: bool | None = None) -> torch.Tensor:
        """Run chunk `chunk`: input_ids (first stage) or hidden states in; hidden states out, or on the
        last stage the logits, or with labels the mean loss (fused: by the fused head + loss as
        GPT.forward(return_logits=False) does; default where it applies)."""
        b, t = input_ids_shape
        positions, max_seqlen = self.positions(input_ids_shape, cu_seqlens, x.device)
        if self.is_first_stage(chunk):
            if t > self.config.max_seq_len:
                raise ValueError(f"sequence of {t} tokens is longer than max_seq_len {self.config.max_seq_len}")
            ids = x
            x = self.tok_emb(ids)
            if self.pos_emb is not None:
                x = x + self.pos_emb(positions).view(-1, t, x.shape[-1])
            x = self.drop(x)
        rope = None if self.config.family != "llama" else \
            rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i in self.chunk_layers[chunk]:
            block = self.blocks[str(i)]
            if recompute:
                x = checkpoint(block, x, rope, None, cu_seqlens, max_seqlen, use_reentrant=False)
            else:
                x = block(x, rope, None, cu_seqlens, max_seqlen)
        if self.is_last_stage(chunk):
            x = self.norm(x)
            return self.lm_head(x) if labels is None else self.head_loss(x, labels, cu_seqlens, fused)
        return x

    def head_loss(self, hidden: torch.Tensor, labels: torch.Tensor, cu_seqlens=None,
                  fused: bool | None = None) -> torch.Tensor:
        """GPT.forward's loss from the final norm's output: position t predicts labels[t + 1], -100
        ignored, no prediction across packed documents."""
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)
        if cu_seqlens is not None:
            targets = targets.flatten().index_fill(0, (cu_seqlens[1:] - 1).long(), -100).view_as(targets)
        if self.fused_loss and fused is not False:
            return ops.linear_cross_entropy(hidden, self.lm_head.weight, targets)
        logits = self.lm_head(hidden)
        return self.loss_fn(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def stage_ranks(num_stages: int, pp: int) -> list[list[int]]:
    """The stages each pipeline rank holds: rank r holds r, pp + r, 2 pp + r, ..."""
    return [list(range(r, num_stages, pp)) for r in range(pp)]
