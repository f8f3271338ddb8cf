"""Privacy accounting with Opacus' accountants (RDP, or the tighter PRV), and noise calibration.

    eps = epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=1000, delta=1e-5, accountant="rdp")
    sigma = calibrate_noise(target_epsilon=8.0, sample_rate=0.01, steps=1000, delta=1e-5)

DP-SGD with Poisson sampling at rate q and noise multiplier sigma for `steps` steps is the
subsampled Gaussian mechanism composed `steps` times; the accountants bound its (epsilon, delta).
Shuffled fixed-size batches are accounted as Poisson sampling at q = batch / samples, the usual
approximation (Opacus does the same); privacy.json says which sampling ran.
"""
from __future__ import annotations

import contextlib
import math
import warnings

ACCOUNTANTS = ("rdp", "prv")
# RDP orders: Opacus' defaults and larger ones, which small sampling rates and few steps need (with
# the defaults alone the optimum sits at the largest order and the bound is loose).
RDP_ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [64, 80, 96, 128, 192, 256, 384, 512, 1024]


def _opacus_accountants():
    try:
        import opacus.accountants
        import opacus.accountants.utils
    except ImportError:
        from fastlm.train.errors import FastlmError

        raise FastlmError("DP-SGD's accounting uses Opacus' accountants: pip install 'fastlm[privacy]' "
                          "(or opacus)") from None
    return opacus.accountants


def _accountant(name: str):
    create_accountant = _opacus_accountants().create_accountant

    if name not in ACCOUNTANTS:
        raise ValueError(f"privacy accountant {name!r}: expected one of {', '.join(ACCOUNTANTS)}")
    return create_accountant(name)


def epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """The epsilon spent after `steps` steps (0 before the first; inf without noise)."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    acc = _accountant(accountant)
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    with _quiet():
        return float(acc.get_epsilon(delta=float(delta), **_options(accountant)))


@contextlib.contextmanager
def _quiet():
    """Opacus warns when the best RDP order is the largest one tried (searches pass through such points)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


def _options(accountant: str) -> dict:
    return {"alphas": RDP_ALPHAS} if accountant == "rdp" else {}


def calibrate_noise(*, target_epsilon: float, sample_rate: float, steps: int, delta: float,
                    accountant: str = "rdp") -> float:
    """The smallest noise multiplier (to about 1%) whose epsilon after `steps` steps is at most the target."""
    get_noise_multiplier = _opacus_accountants().utils.get_noise_multiplier
    _accountant(accountant)  # the name check
    with _quiet():
        return float(get_noise_multiplier(target_epsilon=float(target_epsilon), target_delta=float(delta),
                                      sample_rate=float(sample_rate), steps=int(steps), accountant=accountant,
                                      epsilon_tolerance=0.01, **_options(accountant)))


def steps_within(target_epsilon: float, *, noise_multiplier: float, sample_rate: float, delta: float,
                 accountant: str, limit: int) -> int:
    """The most steps (at most `limit`) whose epsilon stays within target_epsilon (binary search)."""
    def fits(k: int) -> bool:
        return epsilon(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=k, delta=delta,
                       accountant=accountant) <= target_epsilon

    if fits(limit):
        return limit
    lo, hi = 0, limit  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
