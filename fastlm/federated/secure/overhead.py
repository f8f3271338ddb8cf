"""What secure aggregation costs against plain summation of the same float32 updates."""
from __future__ import annotations

import time

import torch

from fastlm.federated.secure.fixed_point import FixedPoint
from fastlm.federated.secure.protocol import SecureAggregator


def secure_agg_overhead(n_clients: int, numel: int, dropped: int = 0, threshold: int | None = None,
                        fixed_point: FixedPoint | None = None, seed: int = 0) -> dict:
    """One simulated round of n_clients updates of numel floats (the last `dropped` clients drop after
    masking), timed against the plain sum of the same updates (the named baseline, same run).

    Returns bytes_ratio (all protocol messages / numel * 4 bytes per client; masked inputs as int64),
    bytes_ratio_bit_packed (the same with residues sent in modulus_bits bits), time_ratio, both timings,
    the byte counts per round and the max error against the float64 sum."""
    generator = torch.Generator().manual_seed(seed)
    updates = {u: torch.randn(numel, generator=generator) for u in range(n_clients)}
    threshold = threshold if threshold is not None else n_clients // 2 + 1
    aggregator = SecureAggregator(list(range(n_clients)), threshold, fixed_point or FixedPoint(), b"overhead")
    drops = set(range(n_clients - dropped, n_clients))

    start = time.perf_counter()
    plain = torch.zeros(numel)
    for u in range(n_clients):
        if u not in drops:
            plain += updates[u]
    plain_seconds = time.perf_counter() - start

    start = time.perf_counter()
    result = aggregator.aggregate(updates, dropped_after_masking=drops)
    secure_seconds = time.perf_counter() - start

    fp = aggregator.fixed_point
    packed = (result.bytes_sent - result.bytes_by_round["masked_input"]
              + len(result.survivors) * (4 + -(-numel * fp.modulus_bits // 8)))  # residues sent in k bits each
    exact = torch.stack([updates[u].double() for u in result.survivors]).sum(0)
    return {"n_clients": n_clients, "numel": numel, "dropped": dropped, "threshold": threshold,
            "bytes_sent": result.bytes_sent, "plain_bytes": result.plain_bytes,
            "bytes_ratio": result.bytes_sent / result.plain_bytes,
            "bytes_ratio_bit_packed": packed / result.plain_bytes, "bytes_by_round": result.bytes_by_round,
            "secure_seconds": secure_seconds, "plain_seconds": plain_seconds,
            "time_ratio": secure_seconds / max(plain_seconds, 1e-9),
            "max_abs_error": float((result.sum - exact).abs().max())}
