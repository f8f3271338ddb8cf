"""The server's side of a round: which clients train, what each contributes, and the new global model.

A client contributes the vector [w * update, w]: its update (local - global weights) weighted by
w = its number of training samples (over the mean client's, which keeps the values near 1 for fixed point),
and w itself, so the sum over the round's clients carries both
the weighted sum of updates and the total weight (FedAvg: sum_k n_k u_k / sum_k n_k). Summing is the
only thing the server needs, so the same vector goes through plain or secure aggregation.

With client_dp (user-level DP, McMahan et al. 2018, "DP-FedAvg"): w = 1 and the update is clipped
to L2 norm `clip`; the server divides by the fixed clients_per_round and adds Gaussian noise of
standard deviation noise_multiplier * clip / clients_per_round, so one user's whole data changes
the average by at most clip / clients_per_round.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from fastlm.federated.config import ClientDPSection


def select_clients(round_index: int, clients: int, per_round: int, seed: int) -> list[int]:
    """The round's clients: `per_round` of them, sampled without replacement (a pure function of seed, round)."""
    if per_round >= clients:
        return list(range(clients))
    rng = np.random.default_rng([seed, round_index, 11])
    return sorted(int(c) for c in rng.choice(clients, size=per_round, replace=False))


def contribution(update: torch.Tensor, num_samples: float, client_dp: ClientDPSection | None) -> torch.Tensor:
    """[w * update, w] in float64 (the sum is exact enough for any number of clients). num_samples may be
    relative (the client's samples over the mean client's): only the ratios matter."""
    update = update.double()
    if client_dp is not None:
        norm = float(update.norm())
        update = update * min(1.0, client_dp.clip / (norm + 1e-12))
        weight = 1.0
    else:
        weight = float(num_samples)
    return torch.cat([update * weight, update.new_tensor([weight])])


def noise_seed(seed: int, round_index: int) -> int:
    """A 63-bit seed of the round's DP noise (independent of the training streams)."""
    digest = hashlib.sha256(f"{seed},{round_index},federated-noise".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def global_update(total: torch.Tensor, *, client_dp: ClientDPSection | None, per_round: int, seed: int,
                  round_index: int) -> torch.Tensor:
    """The step the global model takes, from the round's summed contributions [sum w u, sum w]."""
    weighted, weight = total[:-1], float(total[-1])
    if client_dp is None:
        return weighted / weight
    average = weighted / per_round
    std = client_dp.noise_multiplier * client_dp.clip / per_round
    if std > 0:
        generator = torch.Generator().manual_seed(noise_seed(seed, round_index))
        average = average + std * torch.randn(average.shape, generator=generator, dtype=average.dtype)
    return average


def client_dp_epsilon(client_dp: ClientDPSection, *, clients: int, per_round: int, rounds: int) -> float:
    """The user-level epsilon after `rounds` rounds (each user's data is one client; a client is in a
    round with probability per_round / clients), by fastlm.privacy.accounting."""
    from fastlm.privacy.accounting import epsilon

    delta = client_dp.delta if client_dp.delta is not None else 1.0 / clients
    return epsilon(noise_multiplier=client_dp.noise_multiplier, sample_rate=per_round / clients, steps=rounds,
                   delta=delta, accountant=client_dp.accountant)
