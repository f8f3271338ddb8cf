"""Canary exposure (Carlini et al., "The Secret Sharer", 2019).

    exposure(s) = log2 |R| - log2 rank(s),   rank(s) = 1 + #{r in R: logppl(r) < logppl(s)}

R is every secret of the canary format (|R| = 10**9 for 9 digits): too many to score, so the rank is
estimated from a sample of random candidates. Two estimates are reported:
  * "exposure" (Carlini's extrapolation, section 4.3): a skew-normal (scipy.stats.skewnorm) fitted to
    the candidates' log-perplexities; exposure = -log2 CDF(logppl(s)), capped at log2 |R|. It can
    exceed what the sample alone resolves.
  * "exposure_sampled": the empirical rank among the n candidates, -log2((1 + #lower) / (n + 1)),
    at most log2(n + 1).
A canary the model never saw has exposure around 1 (expected value 1/ln 2 ~ 1.44 bits); a memorised
one approaches log2 |R| (~29.9 bits for 9 digits).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from fastlm.data.canaries import canary_text, random_digits
from fastlm.privacy.audit.scoring import log_perplexities


def exposure_from_sample(canary_logppl: float, candidate_logppl: np.ndarray, log2_space: float) -> dict:
    """Both estimates of one canary's exposure from the candidates' log-perplexities."""
    candidate_logppl = np.asarray(candidate_logppl, dtype=np.float64)
    n = candidate_logppl.size
    lower = int((candidate_logppl < canary_logppl).sum())
    sampled = -math.log2((1 + lower) / (n + 1))
    params = stats.skewnorm.fit(candidate_logppl)
    fitted = -float(stats.skewnorm.logcdf(canary_logppl, *params)) / math.log(2)
    return {"exposure": float(min(max(fitted, 0.0), log2_space)), "exposure_sampled": sampled,
            "candidates_below": lower}


def canary_exposures(model, record: dict, encode, device, *, limit: int | None = None, candidates: int = 2000,
                     seed: int = 0) -> dict:
    """The exposure of the first `limit` canaries of a run's record (fastlm.data.canaries)."""
    fmt = record["format"]
    planted = record["canaries"][:limit] if limit is not None else record["canaries"]
    rng = np.random.default_rng([seed, 0xE4905])
    pool = [canary_text(d) for d in random_digits(rng, candidates)]
    pool_logppl = log_perplexities(model, [encode(t) for t in pool], record["eos_id"], device)
    planted_logppl = log_perplexities(model, [c["token_ids"] for c in planted], record["eos_id"], device)
    rows = []
    for c, x in zip(planted, planted_logppl):
        rows.append({"text": c["text"], "repeats": c["repeats"], "log_perplexity": float(x),
                     **exposure_from_sample(float(x), pool_logppl, fmt["log2_space"])})
    exposures = [r["exposure"] for r in rows]
    return {
        "canaries": rows, "audited": len(rows), "planted": len(record["canaries"]),
        "mean_exposure": float(np.mean(exposures)) if rows else None,
        "mean_exposure_sampled": float(np.mean([r["exposure_sampled"] for r in rows])) if rows else None,
        "log2_space": fmt["log2_space"], "candidates": candidates,
        "candidate_log_perplexity": {"mean": float(pool_logppl.mean()), "std": float(pool_logppl.std())},
        "method": "rank among random candidates of the same format; 'exposure' extrapolates it with a "
                  "skew-normal fitted to the candidates' log-perplexities (Carlini et al. 2019, 4.3), "
                  "'exposure_sampled' is the empirical rank",
    }
