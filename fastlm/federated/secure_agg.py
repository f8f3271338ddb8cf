"""Secure aggregation for federated rounds (Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017): the server learns the sum of the clients' updates and
nothing else about any one of them.

Pieces (all pure functions on CPU torch tensors; no process groups):
- FixedPoint: floats <-> int64 residues mod 2**k (masks cancel exactly); max_abs / rounding_bound.
- ClientMasker: one client's keys, Shamir shares, masked input and unmasking answer.
- sum_masked, reconstruct_secrets, unmask: the server's side.
- SecureAggregator: a whole round in one process (the simulated mode), with dropout after masking.
- RoundDiscarded: fewer than `threshold` clients left, or a secret failed its check (logged); the round's
  updates must be dropped, never used.
- secure_agg_overhead: bytes and time against plain summation.

In-process:
    result = SecureAggregator(ids, threshold, FixedPoint(), round_seed).aggregate(updates, dropped_after_masking)
    result.sum, result.masked, result.bytes_sent, result.plain_bytes, result.survivors

Across ranks (rank 0 the server, which only relays and sums):
    c = ClientMasker(u, round_seed, fp); gather c.public_keys() -> keys (broadcast to all)
    out = c.shares_for(keys, t): route out[v] to v; v calls receive_shares({u: out[v], ...})
    y = c.mask(x, keys_of_clients_that_sent_shares); server: total = sum_masked(ys, fp)
    answers[v] = c.reveal(survivors, dropped); secrets = reconstruct_secrets(answers, survivors, dropped,
    keys, t, round_seed); sum = unmask(total, survivors, secrets, keys, round_seed, fp)
"""
from fastlm.federated.secure.fixed_point import FixedPoint
from fastlm.federated.secure.overhead import secure_agg_overhead
from fastlm.federated.secure.protocol import (
    AggregateResult,
    ClientMasker,
    PublicKeys,
    RecoveredSecrets,
    RoundDiscarded,
    SecureAggregator,
    reconstruct_secrets,
    sum_masked,
    unmask,
)
from fastlm.federated.secure.shamir import Share

__all__ = ["AggregateResult", "ClientMasker", "FixedPoint", "PublicKeys", "RecoveredSecrets", "RoundDiscarded",
           "SecureAggregator", "Share", "reconstruct_secrets", "secure_agg_overhead", "sum_masked", "unmask"]
