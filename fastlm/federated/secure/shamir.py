"""Shamir secret sharing over the prime field GF(2**521 - 1) (a Mersenne prime: room for 32-byte secrets).

A secret s becomes the values at x = 1..n of a random polynomial of degree t-1 with f(0) = s; any t
shares give f(0) back by Lagrange interpolation, and t-1 shares say nothing about s (every s is
equally consistent with them).
"""
from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fastlm.train.errors import FastlmError

PRIME = (1 << 521) - 1
SHARE_BYTES = 66   # ceil(521 / 8): one field element
SECRET_BYTES = 32


@dataclass(frozen=True)
class Share:
    """The polynomial's value y at x (x != 0)."""
    x: int
    y: int

    def to_bytes(self) -> bytes:
        return self.x.to_bytes(4, "big") + self.y.to_bytes(SHARE_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        if len(data) != 4 + SHARE_BYTES:
            raise FastlmError(f"shamir: a share is {4 + SHARE_BYTES} bytes, got {len(data)}")
        return cls(int.from_bytes(data[:4], "big"), int.from_bytes(data[4:], "big"))


def split(secret: bytes, xs: Sequence[int], threshold: int) -> dict[int, Share]:
    """Shares of `secret` (at most 32 bytes) at the points xs, any `threshold` of which reconstruct it."""
    if len(secret) > SECRET_BYTES:
        raise FastlmError(f"shamir: secrets are at most {SECRET_BYTES} bytes, got {len(secret)}")
    _check_points(xs)
    if not 1 <= threshold <= len(xs):
        raise FastlmError(f"shamir: threshold={threshold} with {len(xs)} shares, expected 1 <= threshold <= shares")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: Share(x, _evaluate(coefficients, x)) for x in xs}


def reconstruct(shares: Iterable[Share], threshold: int, length: int = SECRET_BYTES) -> bytes:
    """The secret from `threshold` shares (the first ones given); fewer shares is an error."""
    shares = list(shares)
    if len(shares) < threshold:
        raise FastlmError(f"shamir: {len(shares)} share(s), {threshold} needed to reconstruct")
    value = interpolate_at_zero(shares[:threshold])
    if value >> (8 * length):
        raise FastlmError("shamir: the shares do not reconstruct a secret (inconsistent or corrupted shares)")
    return value.to_bytes(length, "big")


def interpolate_at_zero(shares: Sequence[Share]) -> int:
    """f(0) of the lowest-degree polynomial through the shares (Lagrange), as a field element."""
    _check_points([s.x for s in shares])
    total = 0
    for i, si in enumerate(shares):
        numerator, denominator = 1, 1
        for j, sj in enumerate(shares):
            if i != j:
                numerator = numerator * sj.x % PRIME              # (0 - x_j) / (x_i - x_j), signs cancel
                denominator = denominator * (sj.x - si.x) % PRIME
        total = (total + si.y * numerator * pow(denominator, -1, PRIME)) % PRIME
    return total


def _evaluate(coefficients: list[int], x: int) -> int:
    result = 0
    for c in reversed(coefficients):  # Horner
        result = (result * x + c) % PRIME
    return result


def _check_points(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        raise FastlmError(f"shamir: share points must be distinct, got {sorted(xs)}")
    if any(not 0 < x < 1 << 31 for x in xs):
        raise FastlmError(f"shamir: share points must be in [1, 2**31), got {sorted(xs)}")
