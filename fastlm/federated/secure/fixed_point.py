"""Fixed-point encoding of float updates into the integers mod 2**k, so that masks cancel exactly.

A float x becomes round(x * 2**frac_bits) mod 2**modulus_bits. Sums of encodings are sums mod 2**k;
decoding reads the result centred (values >= 2**(k-1) are negative, like two's complement).

Rounding bound: each encoding is off by at most 2**-(frac_bits+1), so a decoded sum of n encodings
is within n * 2**-(frac_bits+1) of the exact sum of the inputs (`rounding_bound(n)`), plus the
float64 rounding of the result itself (relative 2**-53, nothing for |sum| < 2**(52 - frac_bits)).
Overflow: a sum of n values decodes correctly while its integer stays in [-2**(k-1), 2**(k-1)), so
`encode(x, n_clients=n)` refuses any |round(x * 2**frac_bits)| above (2**(k-1) - 1) // n.
"""
from __future__ import annotations

import torch

from fastlm.train.errors import FastlmError

MAX_MODULUS_BITS = 62  # the sum of two residues stays below 2**63: int64 adds never overflow


class FixedPoint:
    """Encode floats as int64 residues mod 2**modulus_bits with frac_bits fractional bits."""

    def __init__(self, frac_bits: int = 20, modulus_bits: int = 62):
        if not isinstance(modulus_bits, int) or not 8 <= modulus_bits <= MAX_MODULUS_BITS:
            raise FastlmError(f"fixed point: modulus_bits={modulus_bits!r}, expected an int in [8, {MAX_MODULUS_BITS}]")
        if not isinstance(frac_bits, int) or not 0 <= frac_bits <= modulus_bits - 2:
            raise FastlmError(f"fixed point: frac_bits={frac_bits!r}, expected an int in [0, {modulus_bits - 2}] "
                              f"(modulus_bits={modulus_bits})")
        self.frac_bits = frac_bits
        self.modulus_bits = modulus_bits
        self.modulus = 1 << modulus_bits
        self.residue_mask = self.modulus - 1  # x & residue_mask == x mod 2**k, also for negative int64

    def __repr__(self) -> str:
        return f"FixedPoint(frac_bits={self.frac_bits}, modulus_bits={self.modulus_bits})"

    def int_limit(self, n_clients: int = 1) -> int:
        """The largest |encoded integer| one of n_clients may send without the sum wrapping around."""
        if n_clients < 1:
            raise FastlmError(f"fixed point: n_clients={n_clients}, expected >= 1")
        return ((1 << (self.modulus_bits - 1)) - 1) // n_clients

    def max_abs(self, n_clients: int = 1) -> float:
        """The largest |x| each of n_clients may send: their sum still decodes correctly."""
        return self.int_limit(n_clients) / 2.0 ** self.frac_bits

    def rounding_bound(self, n_clients: int = 1) -> float:
        """Per-element bound on |decoded sum - exact sum| for a sum of n_clients encodings."""
        return n_clients * 2.0 ** -(self.frac_bits + 1)

    def encode(self, x: torch.Tensor, n_clients: int = 1) -> torch.Tensor:
        """Floats -> int64 residues in [0, 2**modulus_bits); refuses values whose sum over n_clients would wrap."""
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise FastlmError(f"fixed point: expected a float tensor, got {type(x).__name__}"
                              f"{'' if not torch.is_tensor(x) else ' of ' + str(x.dtype)}")
        scaled = torch.round(x.detach().to("cpu", torch.float64) * 2.0 ** self.frac_bits)
        if not torch.isfinite(scaled).all():
            raise FastlmError("fixed point: the update has non-finite values (nan or inf)")
        limit = self.int_limit(n_clients)
        too_big = scaled.abs() > float(limit)  # float(limit) may round up: the exact check follows in int64
        ints = scaled.to(torch.int64) if not too_big.any() else None
        if ints is None or (ints.abs() > limit).any():
            worst = float(x.detach().abs().max())
            raise FastlmError(f"fixed point: |value| {worst:.6g} exceeds max_abs={self.max_abs(n_clients):.6g} for "
                              f"{n_clients} client(s) (frac_bits={self.frac_bits}, modulus_bits={self.modulus_bits}): "
                              "the sum would overflow the modulus; clip the update or use fewer frac_bits")
        return ints & self.residue_mask

    def decode(self, v: torch.Tensor) -> torch.Tensor:
        """int64 residues -> float64, reading [2**(k-1), 2**k) as negative."""
        if not torch.is_tensor(v) or v.dtype != torch.int64:
            raise FastlmError(f"fixed point: decode expects an int64 tensor, got "
                              f"{v.dtype if torch.is_tensor(v) else type(v).__name__}")
        v = v & self.residue_mask
        centred = torch.where(v >= (self.modulus >> 1), v - self.modulus, v)
        return centred.to(torch.float64) / 2.0 ** self.frac_bits

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(a + b) mod 2**k for residues in [0, 2**k)."""
        return (a + b) & self.residue_mask

    def sub(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(a - b) mod 2**k for residues in [0, 2**k)."""
        return (a - b) & self.residue_mask
