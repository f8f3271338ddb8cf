"""Group fairness of a classifier's predictions: per-group rates, the gaps between groups, and
whether a gap is real (statistical tests, bootstrap confidence intervals).

    from fastlm.eval.fairness import group_report
    r = group_report(y_true, y_pred, groups, scores=probs)
    r.gaps["equalized_odds_difference"]   # {"value": 0.21, "ci_low": 0.12, "ci_high": 0.30}
    r.per_group["A"]["tpr"], r.tests["selection_chi2"]["p_value"], r.to_dict()  (JSON-ready)

Definitions (those of fairlearn, whose values the tests compare with; computed here with torch,
so fairlearn is not needed):
- per group: accuracy; precision, recall (= TPR), F1; TPR = TP / P; FPR = FP / N; selection rate =
  share predicted positive; base rate = share truly positive; calibration error (ECE, when scores
  are given). A rate with an empty denominator is 0 (a group with no positives has TPR 0; no
  negatives: FPR 0; nothing predicted positive: precision 0), as fairlearn and scikit-learn do.
- demographic-parity difference / ratio: max - min / min / max of the selection rate over the groups
  (the ratio is NaN when no group selects anyone, as in fairlearn);
  equalized-odds difference: the larger of the TPR difference and the FPR difference;
  equal-opportunity difference: the TPR difference; accuracy difference: max - min of the accuracy.
- Binary labels: everything is about the positive class (`pos_label`, default: the last label in
  sorted order, e.g. 1 of {0, 1}). Multi-class: each class in turn is the positive class against
  the rest (one-vs-rest); per-group selection rate, TPR and FPR are then {class: rate}, each gap
  is its worst case over the classes (the per-class values are in the gap's "per_class"), and the
  per-group precision, recall and F1 are macro averages over the classes present in the group
  (scikit-learn's average="macro" on that group). Give pos_label to study one class of a
  multi-class task as a binary one-vs-rest problem.
- Calibration error: top-label ECE with `bins` equal-width bins: sum over bins of |accuracy -
  mean confidence| weighted by the share of the group's examples in the bin. scores are (N,)
  probabilities of the positive class (binary) or (N, K) class probabilities in label order.

Tests: chi-square (scipy.stats.chi2_contingency) on group x predicted class and on group x
(right, wrong); Mann-Whitney U (scipy.stats.mannwhitneyu) of each group's scores against the rest's
(binary: P(positive); multi-class: the probability given to the true class), and Kruskal-Wallis
across all groups when there are three or more. Bootstrap: `n_bootstrap` resamples drawn within
each group (group sizes fixed, so no resample loses a group), every gap recomputed on each, the
percentile interval at `confidence`; seeded, and computed for all resamples at once. A gap is a
max - min, never negative, so its interval never contains 0 even without a real difference: whether
a gap is real is what the tests' p-values say; the interval says how large it may be.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

GAPS = ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference",
        "equal_opportunity_difference", "accuracy_difference")


@dataclass
class GroupReport:
    labels: list                 # the classes, in the order of the score columns
    positive_label: Any          # binary (or pos_label given): the positive class; multi-class: None
    groups: list[str]
    per_group: dict[str, dict]   # group -> {"count", "accuracy", "precision", ..., "calibration_error"}
    overall: dict                # the same over all examples
    gaps: dict[str, dict]        # name -> {"value", "ci_low", "ci_high"} (+ "per_class" for multi-class)
    tests: dict[str, dict | None]
    bootstrap: dict              # {"resamples", "confidence", "seed", "stratified_by_group": True}
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready: NaN becomes None, numpy scalars plain numbers."""
        return _jsonable({k: getattr(self, k) for k in self.__dataclass_fields__})


def group_report(y_true: Sequence, y_pred: Sequence, groups: Sequence, scores=None, *, labels: Sequence | None = None,
                 pos_label: Any = None, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0,
                 bins: int = 10) -> GroupReport:
    """Per-group metrics, gaps with bootstrap intervals, and tests of a classifier's predictions.

    y_true, y_pred, groups: one value per example (labels: numbers or strings; groups: anything,
    reported as strings). labels: all the classes, in the order of the score columns (default: the
    sorted values of y_true and y_pred). n_bootstrap = 0: no intervals (ci_low/ci_high None).
    """
    y_true, y_pred, group_values = np.asarray(y_true), np.asarray(y_pred), np.asarray(groups)
    n = len(y_true)
    if not (len(y_pred) == n == len(group_values)):
        raise ValueError(f"y_true, y_pred and groups differ in length ({n}, {len(y_pred)}, {len(group_values)})")
    if n == 0:
        raise ValueError("no examples")
    labels = list(labels) if labels is not None else sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    index = {lab: i for i, lab in enumerate(labels)}
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        unknown = set(values.tolist()) - set(index)
        if unknown:
            raise ValueError(f"{name} has labels not in labels={labels}: {sorted(map(str, unknown))[:5]}")
    if len(labels) < 2:
        raise ValueError(f"expected at least 2 classes, got {labels}")
    t = torch.tensor([index[v] for v in y_true.tolist()], dtype=torch.long)
    p = torch.tensor([index[v] for v in y_pred.tolist()], dtype=torch.long)
    group_names = sorted({str(g) for g in group_values.tolist()})
    gindex = {g: i for i, g in enumerate(group_names)}
    g = torch.tensor([gindex[str(v)] for v in group_values.tolist()], dtype=torch.long)

    if pos_label is not None and pos_label not in index:
        raise ValueError(f"pos_label {pos_label!r} is not one of the labels {labels}")
    binary = len(labels) == 2 or pos_label is not None
    if binary and pos_label is None:
        pos_label = labels[-1]
    classes = [index[pos_label]] if binary else list(range(len(labels)))
    prob = _score_matrix(scores, n, labels) if scores is not None else None

    x = _example_features(t, p, len(labels), prob, bins)
    point = _group_stats(torch.ones(1, n, dtype=torch.float64), x, g, len(group_names))
    rates = _rates(point, classes, binary)
    gaps = _gaps(rates)
    per_group = _per_group(rates, group_names, labels, classes, binary, prob is not None)
    overall_stats = _group_stats(torch.ones(1, n, dtype=torch.float64), x, torch.zeros_like(g), 1)
    overall = _per_group(_rates(overall_stats, classes, binary), ["all"], labels, classes, binary,
                         prob is not None)["all"]

    lows = highs = None
    if n_bootstrap > 0:
        samples = _bootstrap_gaps(x, g, len(group_names), classes, binary, n_bootstrap, seed)
        q = torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2], dtype=torch.float64)
        lows, highs = {}, {}
        for name, values in samples.items():
            lo, hi = torch.nanquantile(values, q).tolist()
            lows[name], highs[name] = lo, hi
    gap_table = {}
    for name, (value, per_class) in gaps.items():
        entry = {"value": value, "ci_low": None if lows is None else lows[name],
                 "ci_high": None if highs is None else highs[name]}
        if not binary and per_class is not None:
            entry["per_class"] = {str(labels[c]): v for c, v in zip(classes, per_class)}
        gap_table[name] = entry

    notes = []
    for name, row in per_group.items():
        if binary and row["positives"] == 0:
            notes.append(f"group {name!r} has no positive examples: its TPR (and recall) is 0 by convention")
        if binary and row["positives"] == row["count"]:
            notes.append(f"group {name!r} has no negative examples: its FPR is 0 by convention")
    if len(group_names) < 2:
        notes.append("only one group: every gap is 0")
    tests = _tests(t, p, g, len(group_names), group_names, prob, classes, binary, len(labels))
    return GroupReport(labels=labels, positive_label=pos_label if binary else None, groups=group_names,
                       per_group=per_group, overall=overall, gaps=gap_table, tests=tests,
                       bootstrap={"resamples": n_bootstrap, "confidence": confidence, "seed": seed,
                                  "stratified_by_group": True},
                       notes=notes)


# ---------------------------------------------------------------- counting

def _score_matrix(scores, n: int, labels: list) -> torch.Tensor:
    s = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    if s.ndim == 1:
        if len(labels) != 2:
            raise ValueError(f"1-D scores are P(positive) of a binary task; with {len(labels)} classes "
                             f"give an (N, {len(labels)}) matrix of class probabilities")
        s = torch.stack([1 - s, s], 1)
    if s.shape != (n, len(labels)):
        raise ValueError(f"scores have shape {tuple(s.shape)}, expected ({n},) or ({n}, {len(labels)})")
    if not torch.isfinite(s).all() or (s < 0).any() or (s > 1).any():
        raise ValueError("scores must be probabilities in [0, 1]")
    return s


def _example_features(t, p, k: int, prob, bins: int) -> dict:
    """Per-example indicator columns whose (weighted) sums per group give every statistic."""
    onehot_t = torch.nn.functional.one_hot(t, k).double()
    onehot_p = torch.nn.functional.one_hot(p, k).double()
    cols = {"n": torch.ones(len(t), 1, dtype=torch.float64), "correct": (t == p).double()[:, None],
            "true": onehot_t, "pred": onehot_p, "tp": onehot_t * onehot_p}
    if prob is not None:
        conf, top = prob.max(1)
        b = (conf * bins).long().clamp(max=bins - 1)
        onehot_b = torch.nn.functional.one_hot(b, bins).double()
        cols["calib_gap"] = onehot_b * ((top == t).double() - conf)[:, None]  # sum per bin: acc - conf
    return cols


def _group_stats(weights: torch.Tensor, x: dict, g: torch.Tensor, num_groups: int) -> dict:
    """{column: (B, G, width)} sums of each feature over each group, weighted by each resample's counts."""
    onehot_g = torch.nn.functional.one_hot(g, num_groups).double()  # (N, G)
    return {name: torch.einsum("bn,ng,nf->bgf", weights, onehot_g, col) for name, col in x.items()}


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b with 0 where b is 0 (fairlearn's and scikit-learn's convention for rates)."""
    return torch.where(b > 0, a / b.clamp_min(1e-300), torch.zeros_like(a))


def _rates(s: dict, classes: list, binary: bool) -> dict:
    n = s["n"][..., 0]
    true, pred, tp = s["true"], s["pred"], s["tp"]
    neg = n[..., None] - true
    out = {"count": n, "accuracy": _div(s["correct"][..., 0], n),
           "selection": _div(pred, n[..., None])[..., classes],
           "tpr": _div(tp, true)[..., classes],
           "fpr": _div(pred - tp, neg)[..., classes],
           "base_rate": _div(true, n[..., None])[..., classes],
           "positives": true[..., classes], "negatives": neg[..., classes]}
    precision, recall, f1 = _div(tp, pred), _div(tp, true), _div(2 * tp, pred + true)
    if binary:
        c = classes[0]
        out["precision"], out["recall"], out["f1"] = precision[..., c], recall[..., c], f1[..., c]
    else:  # macro over the classes present in the group (scikit-learn's labels for that group)
        present = ((true + pred) > 0).double()
        count = present.sum(-1)
        for name, v in (("precision", precision), ("recall", recall), ("f1", f1)):
            out[name] = _div((v * present).sum(-1), count)
    if "calib_gap" in s:
        out["calibration_error"] = _div(s["calib_gap"].abs().sum(-1), n)
    return out


def _gaps(r: dict) -> dict:
    """name -> (value over the batch dimension (B,), per-class values (B, C)); B = 1 gives floats."""
    def spread(v):  # (B, G, C) -> (B, C)
        return v.amax(1) - v.amin(1)

    sel, tpr, fpr = r["selection"], r["tpr"], r["fpr"]
    dp_c = spread(sel)
    ratio_c = sel.amin(1) / sel.amax(1)  # 0 / 0 = NaN: nobody selected (fairlearn gives NaN too)
    eop_c = spread(tpr)
    eo_c = torch.maximum(eop_c, spread(fpr))
    acc = r["accuracy"].amax(1) - r["accuracy"].amin(1)
    out = {"demographic_parity_difference": (dp_c.amax(1), dp_c),
           "demographic_parity_ratio": (_nanmin(ratio_c), ratio_c),
           "equalized_odds_difference": (eo_c.amax(1), eo_c),
           "equal_opportunity_difference": (eop_c.amax(1), eop_c),
           "accuracy_difference": (acc, None)}
    if "calibration_error" in r:
        ce = r["calibration_error"]
        out["calibration_error_difference"] = (ce.amax(1) - ce.amin(1), None)
    if sel.shape[0] == 1:
        return {k: (float(v[0]), None if c is None else c[0].tolist()) for k, (v, c) in out.items()}
    return out


def _nanmin(v: torch.Tensor) -> torch.Tensor:
    """Minimum over the last dimension ignoring NaN (NaN only when every entry is NaN)."""
    filled = torch.where(torch.isnan(v), torch.full_like(v, math.inf), v).amin(-1)
    return torch.where(torch.isinf(filled), torch.full_like(filled, math.nan), filled)


def _per_group(r: dict, names: list, labels: list, classes: list, binary: bool, calibrated: bool) -> dict:
    out = {}
    for i, name in enumerate(names):
        row = {"count": int(r["count"][0, i]), "accuracy": float(r["accuracy"][0, i])}
        for key in ("precision", "recall", "f1"):
            row[key] = float(r[key][0, i])
        for key, out_key in (("tpr", "tpr"), ("fpr", "fpr"), ("selection", "selection_rate"),
                             ("base_rate", "base_rate"), ("positives", "positives")):
            values = r[key][0, i].tolist()
            if binary:
                row[out_key] = int(values[0]) if key == "positives" else values[0]
            else:
                row[out_key] = {str(labels[c]): (int(v) if key == "positives" else v) for c, v in zip(classes, values)}
        if calibrated:
            row["calibration_error"] = float(r["calibration_error"][0, i])
        out[name] = row
    return out


# ---------------------------------------------------------------- bootstrap

def stratified_resamples(g: torch.Tensor, num_groups: int, n_resamples: int, seed: int) -> torch.Tensor:
    """(n_resamples, N) example indices: each row draws, within every group, as many examples as
    the group has, with replacement."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(n_resamples, len(g), dtype=torch.long)
    start = 0
    for k in range(num_groups):  # a loop over groups, not examples
        members = torch.nonzero(g == k).flatten()
        draw = torch.randint(0, len(members), (n_resamples, len(members)), generator=gen)
        out[:, start:start + len(members)] = members[draw]
        start += len(members)
    return out


def _bootstrap_gaps(x: dict, g, num_groups: int, classes: list, binary: bool, n_resamples: int, seed: int,
                    chunk_elements: int = 2**24) -> dict:
    """{gap: (n_resamples,) values}, the resamples' counts as weights, in chunks that bound memory."""
    n = len(g)
    idx = stratified_resamples(g, num_groups, n_resamples, seed)
    per_chunk = max(1, chunk_elements // n)
    parts: dict[str, list] = {}
    for start in range(0, n_resamples, per_chunk):
        rows = idx[start:start + per_chunk]
        weights = torch.zeros(len(rows), n, dtype=torch.float64)
        weights.scatter_add_(1, rows, torch.ones(rows.shape, dtype=torch.float64))
        for name, (value, _) in _gaps(_rates(_group_stats(weights, x, g, num_groups), classes, binary)).items():
            parts.setdefault(name, []).append(value)
    return {name: torch.cat(v) for name, v in parts.items()}


# ---------------------------------------------------------------- tests

def _tests(t, p, g, num_groups: int, names: list, prob, classes: list, binary: bool, num_labels: int) -> dict:
    from scipy import stats

    tests: dict[str, dict | None] = {}
    outcome = (p == classes[0]).long() if binary else p  # binary: selected or not
    k = 2 if binary else num_labels
    tests["selection_chi2"] = _chi2(stats, g, outcome, num_groups, k)
    tests["error_chi2"] = _chi2(stats, g, (t != p).long(), num_groups, 2)
    if prob is not None and num_groups >= 2:
        score = prob[:, classes[0]] if binary else prob.gather(1, t[:, None])[:, 0]
        per_group = {}
        for i, name in enumerate(names):
            inside, rest = score[g == i].numpy(), score[g != i].numpy()
            res = stats.mannwhitneyu(inside, rest, alternative="two-sided")
            per_group[name] = {"statistic": float(res.statistic), "p_value": float(res.pvalue),
                               "median": float(np.median(inside)), "median_rest": float(np.median(rest))}
        what = "P(positive)" if binary else "P(true class)"
        tests["score_mannwhitney"] = {"score": what, "group_vs_rest": per_group}
        if num_groups >= 3:
            res = stats.kruskal(*[score[g == i].numpy() for i in range(num_groups)])
            tests["score_kruskal"] = {"score": what, "statistic": float(res.statistic), "p_value": float(res.pvalue)}
    return tests


def _chi2(stats, g, outcome, num_groups: int, k: int) -> dict | None:
    table = torch.zeros(num_groups, k, dtype=torch.long)
    table.index_put_((g, outcome), torch.ones_like(g), accumulate=True)
    kept = table[:, table.sum(0) > 0]  # an outcome nobody has carries no information (and breaks the test)
    if kept.shape[0] < 2 or kept.shape[1] < 2:
        return None
    res = stats.chi2_contingency(kept.numpy())
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue), "dof": int(res.dof),
            "table": table.tolist()}


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.generic,)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
