"""Dropout randomness under tensor parallelism.

Where activations are replicated over the tp ranks (the residual stream without sequence
parallel) every rank must drop the same elements; where they are split (attention heads, or the
residual stream's sequence shards with sequence parallel) the ranks must draw independently.
TPDropout draws from one of two generators: "replicated" (seeded alike on every tp rank) or
"sharded" (seeded by tp rank). Attention dropout runs inside the attention kernel on the default
generator, which parallelize_tp re-seeds per tp rank (its heads are split).
"""
from __future__ import annotations

import torch
from torch import nn

SHARDED_SEED_STRIDE = 7919


class RNGTracker:
    """The two dropout generators of a tp model (their states go into checkpoints)."""

    def __init__(self, seed: int, tp_rank: int, device: torch.device):
        self.generators = {
            "replicated": torch.Generator(device=device).manual_seed(seed + 1),
            "sharded": torch.Generator(device=device).manual_seed(seed + 2 + SHARDED_SEED_STRIDE * (tp_rank + 1)),
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: g.get_state() for k, g in self.generators.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, s in state.items():
            self.generators[k].set_state(s)


class TPDropout(nn.Module):
    def __init__(self, p: float, tracker: RNGTracker, region: str):
        super().__init__()
        if region not in ("replicated", "sharded"):
            raise ValueError(f"region must be 'replicated' or 'sharded', got {region!r}")
        self.p, self.tracker, self.region = p, tracker, region

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        g = self.tracker.generators[self.region]
        keep = torch.empty(x.shape, device=x.device, dtype=x.dtype).bernoulli_(1 - self.p, generator=g)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, region={self.region}"


def reseed_default_per_tp_rank(tp_rank: int) -> None:
    """Attention dropout (default generator) must differ between ranks holding different heads."""
    if tp_rank:
        torch.manual_seed(torch.initial_seed() + SHARDED_SEED_STRIDE * tp_rank)
