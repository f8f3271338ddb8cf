"""The [privacy] config section (DP-SGD) and its checks; fastlm.train.config holds it as `privacy`.

    [privacy]
    dp_sgd = true
    max_grad_norm = 1.0        # C: every sample's gradient is clipped to this norm
    target_epsilon = 8.0       # or noise_multiplier = 1.1 (both: the noise is given, the run stops at the budget)
    delta = 1e-5               # default 1 / number of training samples
    sampling = "poisson"       # or "shuffle" (fixed-size batches of a seeded permutation)
    accountant = "rdp"         # or "prv"
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from fastlm.privacy.accounting import ACCOUNTANTS

SAMPLINGS = ("poisson", "shuffle")


@dataclass
class PrivacySection:
    dp_sgd: bool = False
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float | None = None
    sampling: str = "poisson"
    accountant: str = "rdp"


def validate_privacy(config) -> None:
    """One-line ConfigErrors for [privacy], and for what DP-SGD does not combine with."""
    from fastlm.train.errors import ConfigError  # here: fastlm.train's config imports this module
    from fastlm.train.toml_text import show

    p = config.privacy
    if not p.dp_sgd:
        return
    if not (p.max_grad_norm > 0 and math.isfinite(p.max_grad_norm)):
        raise ConfigError(f"privacy.max_grad_norm = {show(p.max_grad_norm)}: expected a positive number")
    if p.noise_multiplier is None and p.target_epsilon is None:
        raise ConfigError("privacy.dp_sgd = true needs privacy.noise_multiplier or privacy.target_epsilon")
    if p.noise_multiplier is not None and not (p.noise_multiplier >= 0 and math.isfinite(p.noise_multiplier)):
        raise ConfigError(f"privacy.noise_multiplier = {show(p.noise_multiplier)}: expected a number >= 0")
    if p.target_epsilon is not None and not (p.target_epsilon > 0 and math.isfinite(p.target_epsilon)):
        raise ConfigError(f"privacy.target_epsilon = {show(p.target_epsilon)}: expected a positive number")
    if p.delta is not None and not 0 < p.delta < 1:
        raise ConfigError(f"privacy.delta = {show(p.delta)}: expected a number between 0 and 1")
    if p.sampling not in SAMPLINGS:
        raise ConfigError(f"privacy.sampling = {show(p.sampling)}: expected one of {', '.join(SAMPLINGS)}")
    if p.accountant not in ACCOUNTANTS:
        raise ConfigError(f"privacy.accountant = {show(p.accountant)}: expected one of {', '.join(ACCOUNTANTS)}")
    t, par, m = config.train, config.parallel, config.model
    unsupported = {
        "train.precision = \"fp16\" (use bf16 or fp32)": t.precision == "fp16",
        "parallel.pp > 1": par.pp > 1,
        f"parallel.sync = \"{par.sync}\"": par.sync != "every_step",
        "parallel.dp_shares": par.dp_shares is not None,
        "model.linear = \"int8_train\"": m.linear != "default",
        "data.stateful = true": config.data.stateful,
        "train.adversarial": t.adversarial != "none",
        f"model.family = {show(m.family)}": m.is_fitted or m.carries_state,
    }
    for what, hit in unsupported.items():
        if hit:
            raise ConfigError(f"privacy.dp_sgd = true does not combine with {what}")
