"""Summing the round's contributions: in one process or over the data-parallel ranks (the server is rank 0),
in the clear or by secure aggregation (fastlm.federated.secure_agg: the server sees masked vectors only).

    result = Aggregation(fed, seed, numel, group).run(round_index, selected, contributions)
    result.total        # the sum of the contributions on the server (None elsewhere, or when the round is discarded)

`contributions` holds this process's clients only; `selected` is the whole round (the same on every rank).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from fastlm.federated.config import FederatedSection

log = logging.getLogger(__name__)


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
        survivors = [c for c in selected if c not in dropped]
        if len(survivors) < threshold:  # nobody unmasks anything: the round is dropped before round 3
            reason = f"{len(survivors)} of {len(selected)} clients sent masked inputs, threshold {threshold}"
            log.warning("secure aggregation round %d discarded: %s", round_index + 1, reason)
            return RoundSum(None, 0, len(selected) * self.numel * 4, survivors, sorted(dropped), discarded=reason)
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
    """The fixed-point code of a round's sum: 32 fractional bits in 62 (rounding <= 2^-33 per value and client;
    a contribution's values may reach 2^29 / clients, far beyond a sample-weighted update's)."""
    from fastlm.federated.secure_agg import FixedPoint

    return FixedPoint(frac_bits=32, modulus_bits=62)


def secure_agg_over_ranks(agg: Aggregation, round_index: int, selected: list[int],
                          contributions: dict[int, torch.Tensor], threshold: int, dropped: set[int]) -> RoundSum:
    """The same protocol with the clients spread over the ranks: every message goes through a collective
    (the shares are encrypted to their recipient, so relaying them to every rank shows nothing more); the
    server (rank 0) receives each rank's sum of its clients' masked inputs and unmasks the total."""
    from fastlm.federated import secure_agg

    group, fp, seed = agg.group, fixed_point(len(selected)), round_seed(agg.seed, round_index)
    maskers = {c: secure_agg.ClientMasker(c, seed, fp) for c in contributions}
    keys = _merge(_all_gather({c: m.public_keys() for c, m in maskers.items()}, group))  # round 0
    outgoing = {(u, v): msg for u, m in maskers.items() for v, msg in m.shares_for(keys, threshold).items()}
    relayed = _merge(_all_gather(outgoing, group))                                       # round 1
    for v, m in maskers.items():
        m.receive_shares({u: msg for (u, w), msg in relayed.items() if w == v})
    survivors = [c for c in selected if c not in dropped]
    mine = [maskers[c].mask(x, keys) for c, x in contributions.items() if c not in dropped]  # round 2
    partial = secure_agg.sum_masked(mine, fp) if mine else torch.zeros(agg.numel, dtype=torch.int64)
    partials = [torch.empty_like(partial) for _ in range(agg.world_size)] if agg.is_server else None
    dist.gather(partial, partials, dst=dist.get_global_rank(group, 0), group=group)
    answers = {c: m.reveal(survivors, dropped) for c, m in maskers.items() if c not in dropped}
    reveals = _merge(_all_gather(answers, group))                                        # round 3
    key_bytes = sum(k.nbytes for k in keys.values())
    sent = (key_bytes * (1 + len(selected)) + 2 * sum(4 + len(m) for m in relayed.values())
            + len(survivors) * (4 + 8 * agg.numel) + 64 * sum(len(a) for a in reveals.values()))
    plain = len(selected) * agg.numel * 4
    if not agg.is_server:
        return RoundSum(None, sent, plain, survivors, sorted(dropped))
    try:
        secrets = secure_agg.reconstruct_secrets(reveals, survivors, dropped, keys, threshold, seed)
        total = secure_agg.unmask(secure_agg.sum_masked(partials, fp), survivors, secrets, keys, seed, fp)
    except secure_agg.RoundDiscarded as e:
        return RoundSum(None, sent, plain, survivors, sorted(dropped), discarded=str(e))
    return RoundSum(total, sent, plain, survivors, sorted(dropped))


def _all_gather(obj, group) -> list:
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def _merge(dicts: list[dict]) -> dict:
    return {k: v for d in dicts for k, v in d.items()}
