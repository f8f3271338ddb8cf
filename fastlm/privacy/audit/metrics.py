"""How well an attack's scores tell members from non-members: ROC-AUC, TPR at a low FPR, and
bootstrap confidence intervals. A higher score means "more likely a member"."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def _labelled(members, nonmembers) -> tuple[np.ndarray, np.ndarray]:
    members, nonmembers = np.asarray(members, dtype=np.float64), np.asarray(nonmembers, dtype=np.float64)
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError("membership metrics need at least one member and one non-member score")
    return np.concatenate([np.ones(members.size), np.zeros(nonmembers.size)]), np.concatenate([members, nonmembers])


def tpr_at_fpr(members, nonmembers, fpr: float = 0.01) -> float:
    """The highest true-positive rate of any threshold whose false-positive rate is at most `fpr`."""
    fprs, tprs, _ = roc_curve(*_labelled(members, nonmembers))
    return float(tprs[fprs <= fpr].max())  # roc_curve starts at (0, 0): never empty


def roc(members, nonmembers) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) of every threshold."""
    fprs, tprs, _ = roc_curve(*_labelled(members, nonmembers))
    return fprs, tprs


def auc(members, nonmembers) -> float:
    return float(roc_auc_score(*_labelled(members, nonmembers)))


def summarize(members, nonmembers, *, fpr: float = 0.01, resamples: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict:
    """AUC and TPR at `fpr`, each with a percentile bootstrap interval: members and non-members are
    resampled separately (with replacement, so each resample keeps both counts), from `seed`."""
    members, nonmembers = np.asarray(members, dtype=np.float64), np.asarray(nonmembers, dtype=np.float64)
    rng = np.random.default_rng(seed)
    aucs, tprs = np.empty(resamples), np.empty(resamples)
    for i in range(resamples):
        m = members[rng.integers(0, members.size, members.size)]
        n = nonmembers[rng.integers(0, nonmembers.size, nonmembers.size)]
        aucs[i], tprs[i] = auc(m, n), tpr_at_fpr(m, n, fpr)
    tail = 100 * (1 - level) / 2
    return {
        "auc": auc(members, nonmembers), "auc_ci": np.percentile(aucs, [tail, 100 - tail]).tolist(),
        "tpr_at_fpr": tpr_at_fpr(members, nonmembers, fpr), "tpr_at_fpr_ci": np.percentile(tprs, [tail, 100 - tail]).tolist(),
        "fpr": fpr, "ci_level": level, "resamples": resamples, "members": int(members.size),
        "nonmembers": int(nonmembers.size),
    }
