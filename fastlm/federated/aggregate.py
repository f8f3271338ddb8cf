"""Summing the round's contributions: in one process or over the data-parallel ranks (the server is rank 0),
in the clear or by secure aggregation (fastlm.federated.secure_agg: the server sees masked vectors only).

    result = Aggregation(fed, seed, numel, group).run(round_index, selected, contributions)
    result.total        # the sum of the contributions on the server (None elsewhere, or when the round is discarded)

`contributions` holds this process's clients only; `selected` is the whole round (the same on every rank).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from fastlm.federated.config import FederatedSection


@dataclass
class RoundSum:
    total: torch.Tensor | None           # float64 [sum w u, sum w] on the server; None: not here or discarded
    bytes_sent: int                      # what the clients and the server sent for this sum (payload bytes)
    plain_bytes: int                     # what sending the updates in the clear (fp32) takes
    survivors: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    discarded: str | None = None         # why the round was discarded (secure aggregation below its threshold)


def round_seed(seed: int, round_index: int) -> bytes:
    return hashlib.sha256(f"{seed},{round_index},secure-aggregation".encode()).digest()


def dropped_clients(selected: list[int], probability: float, seed: int, round_index: int) -> set[int]:
    """The clients that (in simulation) drop out after sending their masked update's keys and shares."""
    if not probability:
        return set()
    rng = np.random.default_rng([seed, round_index, 13])
    return {c for c, u in zip(selected, rng.random(len(selected))) if u < probability}


class Aggregation:
    def __init__(self, fed: FederatedSection, seed: int, numel: int, group=None, rank: int = 0, world_size: int = 1):
        self.fed, self.seed, self.numel, self.group = fed, seed, numel, group
        self.rank, self.world_size = rank, world_size

    @property
    def is_server(self) -> bool:
        return self.rank == 0

    def run(self, round_index: int, selected: list[int], contributions: dict[int, torch.Tensor]) -> RoundSum:
        if self.fed.secure_aggregation:
            return self._secure(round_index, selected, contributions)
        return self._plain(selected, contributions)

    # ------------------------------------------------------------------ in the clear

    def _plain(self, selected: list[int], contributions: dict[int, torch.Tensor]) -> RoundSum:
        numel = self.numel
        total = torch.zeros(numel, dtype=torch.float64)
        for value in contributions.values():
            total += value
        if self.world_size > 1:
            dist.reduce(total, dst=0, group=self.group)  # the server (rank 0) receives the sum
        plain = len(selected) * numel * 4
        return RoundSum(total if self.is_server else None, plain, plain, survivors=list(selected))

    # ------------------------------------------------------------------ secure aggregation

    def _secure(self, round_index: int, selected: list[int], contributions: dict[int, torch.Tensor]) -> RoundSum:
        from fastlm.federated import secure_agg

        fed = self.fed
        threshold = fed.threshold or len(selected) // 2 + 1
        dropped = dropped_clients(selected, fed.dropout, self.seed, round_index)
        if self.world_size > 1:
            return secure_agg_over_ranks(self, round_index, selected, contributions, threshold, dropped)
        aggregator = secure_agg.SecureAggregator(selected, threshold, fixed_point(len(selected)),
                                                 round_seed(self.seed, round_index))
        try:
            result = aggregator.aggregate(contributions, dropped_after_masking=dropped)
        except secure_agg.RoundDiscarded as e:
            return RoundSum(None, 0, len(selected) * self.numel * 4, [c for c in selected if c not in dropped],
                            sorted(dropped), discarded=str(e))
        return RoundSum(result.sum.double(), int(result.bytes_sent), int(result.plain_bytes), list(result.survivors),
                        sorted(dropped))


def fixed_point(clients: int):
    """The fixed-point code of a round's sum: 20 fractional bits (rounding <= 2^-21 per value and client)."""
    from fastlm.federated.secure_agg import FixedPoint

    return FixedPoint(frac_bits=20, modulus_bits=62)


def secure_agg_over_ranks(agg: Aggregation, round_index, selected, contributions, threshold, dropped) -> RoundSum:
    raise NotImplementedError  # replaced below when the protocol's per-client pieces are wired
