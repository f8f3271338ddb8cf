"""Split a built model (GPT, EncoderForMaskedLM) into pipeline stages of consecutive layers.

    layers = partition_layers(costs, num_stages)            # layers per stage
    stage = PipelineStage(model, stage_layers, stages=[r, pp + r])   # what one rank holds

A stage is the same model class with the parts it does not own removed (`prune`): the model names
its first-stage parts (embeddings), its last-stage parts (final norm, head) and its Layers
container; its one forward skips what is missing. `stage.module` holds every part the rank owns
under the whole model's names, so state-dict keys are a subset of the model's and checkpoints
reshard between layouts by name; `stage.chunks[c]` is the model of chunk (virtual stage) c.
With tied embeddings and the first and last stage on different ranks, the last stage keeps the
embedding module registered (its weight is the head's): the pipeline sums the two copies'
gradients every step so they stay equal (they start equal and take the same optimizer steps).
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn

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


def _get(model: nn.Module, path: str) -> nn.Module | None:
    for name in path.split("."):
        model = model._modules.get(name) if model is not None else None
    return model


def layers_of(model: nn.Module):
    """The model's Layers container (model.pipeline_layers names it)."""
    if not hasattr(model, "pipeline_layers"):
        raise ValueError(f"pipeline: {type(model).__name__} does not name its pipeline parts (pipeline_layers, "
                         f"pipeline_first, pipeline_last); fastlm GPT and EncoderForMaskedLM models can be split")
    layers = _get(model, model.pipeline_layers)
    if len(layers) != model.config.n_layer:
        raise ValueError(f"pipeline: this {model.config.family} model runs {len(layers)} shared blocks at "
                         f"{model.config.n_layer} layers; a pipeline stage needs layers of its own")
    return layers


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object sharing every submodule and parameter, whose children can be replaced."""
    new = copy.copy(module)
    new._modules, new._parameters, new._buffers = dict(module._modules), dict(module._parameters), \
        dict(module._buffers)
    return new


def prune(model: nn.Module, layers, first: bool, last: bool, keep: tuple[str, ...] = ()) -> nn.Module:
    """The model holding only `layers` (layer indices), the first-stage parts if `first`, the
    last-stage parts if `last` (and the parts named in `keep`). Shares the module objects."""
    root = _shallow_copy(model)
    copied = {"": root}

    def parent_of(path: str) -> tuple[nn.Module, str]:
        *names, leaf = path.split(".")
        prefix = ""
        for name in names:
            key = f"{prefix}{name}"
            if key not in copied:
                copied[key] = _shallow_copy(copied[prefix.rstrip(".")]._modules[name])
                copied[prefix.rstrip(".")]._modules[name] = copied[key]
            prefix = key + "."
        return copied[prefix.rstrip(".")], leaf

    for path in (() if first else model.pipeline_first) + (() if last else model.pipeline_last):
        if path not in keep:
            owner, name = parent_of(path)
            if name in owner._modules:
                owner._modules[name] = None
    owner, name = parent_of(model.pipeline_layers)
    owner._modules[name] = owner._modules[name].subset(layers)
    return root


def tied_parts(model: nn.Module) -> tuple[str, ...]:
    """The first-stage parts that share a parameter with a last-stage part (a tied embedding)."""
    last = {id(p) for path in model.pipeline_last if (m := _get(model, path)) is not None for p in m.parameters()}
    return tuple(path for path in model.pipeline_first if (m := _get(model, path)) is not None
                 and any(id(p) in last for p in m.parameters()))


def _params(model: nn.Module, paths) -> float:
    return float(sum(p.numel() for path in paths if (m := _get(model, path)) is not None for p in m.parameters()))


def param_costs(model: nn.Module) -> tuple[list[float], float, float]:
    """Cost by parameter count: per layer, the first-stage parts (embeddings), the last-stage parts (head)."""
    per_layer = [float(sum(p.numel() for p in b.parameters())) for b in layers_of(model)]
    return per_layer, _params(model, model.pipeline_first), _params(model, model.pipeline_last)


def measured_costs(model: nn.Module, batch_size: int, seq_len: int,
                   repeats: int = 5) -> tuple[list[float], float, float]:
    """Cost by measured forward + backward time of every layer, the first-stage and the last-stage
    parts (seconds), each timed through the model's own forward on a pruned copy.

    Each piece is timed `repeats` times in interleaved rounds (so all see the same machine load) and
    its fastest time counts. Ranks measure different numbers: the caller must agree on one set
    (the pipeline broadcasts rank 0's)."""
    layers = layers_of(model)
    weight = next(model.parameters())
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), device=weight.device)
    x = prune(model, [], first=True, last=False)(input_ids=ids).detach()

    def run(piece: nn.Module, **kwargs) -> torch.Tensor:
        out = piece(input_ids=ids, **kwargs)
        return out[1] if isinstance(out, tuple) else out  # the loss, or the hidden states

    pieces = [lambda: run(prune(model, [], first=True, last=False))]
    pieces += [lambda i=i: run(prune(model, [i], first=False, last=False), hidden_states=x.requires_grad_())
               for i in layers.indices()]
    pieces += [lambda: run(prune(model, [], first=False, last=True), hidden_states=x.requires_grad_(), labels=ids)]
    best = [float("inf")] * len(pieces)
    for round_ in range(repeats + 1):  # round 0 warms up
        for i, piece in enumerate(pieces):
            t0 = time.perf_counter()
            piece().float().sum().backward()
            if weight.device.type == "cuda":
                torch.cuda.synchronize(weight.device)
            if round_:
                best[i] = min(best[i], time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    # Blocks of the same structure cost the same: each gets the median of its kind (timing noise
    # on a busy machine would otherwise move layers between stages from run to run).
    per_layer = best[1:-1]
    kinds: dict = {}
    for i, block in enumerate(layers):
        kinds.setdefault(tuple((type(m).__name__, tuple(p.shape)) for m in block.modules()
                               for p in m.parameters(recurse=False)), []).append(i)
    for members in kinds.values():
        median = sorted(per_layer[i] for i in members)[len(members) // 2]
        for i in members:
            per_layer[i] = median
    return per_layer, best[0], best[-1]


class PipelineStage:
    """The part of a model one pipeline rank holds: one or more chunks (virtual stages) of layers.

    stage_layers: the number of layers of every stage of the whole pipeline; stages: the stage
    indices this rank holds (chunk c is stages[c]). `module`: everything the rank holds (what to
    optimize and checkpoint); `chunks[c]`: chunk c's model, run as model(**inputs, hidden_states=x)
    (x: the previous stage's output; the first stage embeds input_ids, the last returns the loss).
    """

    def __init__(self, model: nn.Module, stage_layers: list[int], stages: list[int]):
        num_stages = len(stage_layers)
        layers = layers_of(model)
        check_stage_layers(stage_layers, len(layers), num_stages)
        self.stage_layers = list(stage_layers)
        self.stages = list(stages)
        self.num_stages = num_stages
        starts = [sum(stage_layers[:s]) for s in range(num_stages)]
        indices = layers.indices()
        self.chunk_layers = [indices[starts[s]:starts[s] + stage_layers[s]] for s in stages]
        self.has_first = 0 in stages
        self.has_last = num_stages - 1 in stages
        tied = tied_parts(model)
        self.tied = bool(tied)
        # A last stage without the first keeps the tied embedding's module under its own name.
        keep = tied if self.has_last and not self.has_first else ()
        mine = [i for chunk in self.chunk_layers for i in chunk]
        self.module = prune(model, mine, self.has_first, self.has_last, keep)
        self.chunks = [prune(model, layers, s == 0, s == num_stages - 1) for s, layers in
                       zip(stages, self.chunk_layers)]
        self._tied_weight = next(_get(model, tied[0]).parameters()) if tied else None

    def tied_weight(self) -> nn.Parameter | None:
        """The copy of a tied embedding this rank holds when the first and last stage are on different ranks."""
        if self._tied_weight is None or self.has_first == self.has_last:
            return None
        return self._tied_weight

    def is_first_stage(self, chunk: int) -> bool:
        return self.stages[chunk] == 0

    def is_last_stage(self, chunk: int) -> bool:
        return self.stages[chunk] == self.num_stages - 1


def stage_ranks(num_stages: int, pp: int) -> list[list[int]]:
    """The stages each pipeline rank holds: rank r holds r, pp + r, 2 pp + r, ..."""
    return [list(range(r, num_stages, pp)) for r in range(pp)]
