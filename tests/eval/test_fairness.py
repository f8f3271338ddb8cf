"""fastlm.eval.fairness against fairlearn (MetricFrame and its fairness metrics) and scipy, on random
inputs with several and unbalanced groups, multi-class labels and groups without positives."""
import functools
import json
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

fairlearn = pytest.importorskip("fairlearn")
from fairlearn import metrics as FM
from sklearn import metrics as skm

from fastlm.eval.fairness import group_report, stratified_resamples


def _binary_case(seed, sizes=(7, 40, 300, 900), bias=0.3):
    rng = np.random.default_rng(seed)
    groups = np.concatenate([np.full(n, name) for n, name in zip(sizes, "abcdefg")])
    rng.shuffle(groups)
    n = len(groups)
    y_true = rng.integers(0, 2, n)
    y_pred = np.where(rng.random(n) < 0.75, y_true, 1 - y_true)
    y_pred[(groups == "b") & (rng.random(n) < bias)] = 1  # group b gets more positives
    return y_true, y_pred, groups


def _fairlearn_frame(y_true, y_pred, groups, pos_label=1):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero_division warnings
        rates = {"tpr": functools.partial(FM.true_positive_rate, pos_label=pos_label),
                 "fpr": functools.partial(FM.false_positive_rate, pos_label=pos_label),
                 "selection_rate": functools.partial(FM.selection_rate, pos_label=pos_label),
                 "accuracy": skm.accuracy_score,
                 "precision": functools.partial(skm.precision_score, pos_label=pos_label, zero_division=0),
                 "recall": functools.partial(skm.recall_score, pos_label=pos_label, zero_division=0),
                 "f1": functools.partial(skm.f1_score, pos_label=pos_label, zero_division=0),
                 "count": FM.count}
        return FM.MetricFrame(metrics=rates, y_true=y_true, y_pred=y_pred, sensitive_features=groups)


def _fairlearn_gaps(y_true, y_pred, groups, pos_label=1):
    kw = {"sensitive_features": groups}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = FM.MetricFrame(metrics=functools.partial(FM.selection_rate, pos_label=pos_label), y_true=y_true,
                             y_pred=y_pred, **kw)
        tpr = FM.MetricFrame(metrics=functools.partial(FM.true_positive_rate, pos_label=pos_label), y_true=y_true,
                             y_pred=y_pred, **kw)
        fpr = FM.MetricFrame(metrics=functools.partial(FM.false_positive_rate, pos_label=pos_label), y_true=y_true,
                             y_pred=y_pred, **kw)
    if pos_label == 1:  # the library's own functions (they fix pos_label = 1)
        return {"demographic_parity_difference": FM.demographic_parity_difference(y_true, y_pred, **kw),
                "demographic_parity_ratio": FM.demographic_parity_ratio(y_true, y_pred, **kw),
                "equalized_odds_difference": FM.equalized_odds_difference(y_true, y_pred, **kw),
                "equal_opportunity_difference": FM.equal_opportunity_difference(y_true, y_pred, **kw)}
    return {"demographic_parity_difference": sel.difference(), "demographic_parity_ratio": sel.ratio(),
            "equalized_odds_difference": max(tpr.difference(), fpr.difference()),
            "equal_opportunity_difference": tpr.difference()}


def _assert_matches_fairlearn(report, y_true, y_pred, groups, pos_label=1):
    frame = _fairlearn_frame(y_true, y_pred, groups, pos_label).by_group
    for name, row in report.per_group.items():
        for key in ("tpr", "fpr", "selection_rate", "accuracy", "precision", "recall", "f1", "count"):
            assert row[key] == pytest.approx(frame.loc[name, key], abs=1e-12), (name, key)
    for key, value in _fairlearn_gaps(y_true, y_pred, groups, pos_label).items():
        if np.isnan(value):
            assert np.isnan(report.gaps[key]["value"]), key
        else:
            assert report.gaps[key]["value"] == pytest.approx(value, abs=1e-12), key


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_matches_fairlearn_with_unbalanced_groups(seed):
    y_true, y_pred, groups = _binary_case(seed)
    report = group_report(y_true, y_pred, groups, n_bootstrap=0)
    assert report.groups == ["a", "b", "c", "d"] and report.positive_label == 1
    _assert_matches_fairlearn(report, y_true, y_pred, groups)
    assert report.gaps["demographic_parity_difference"]["value"] > 0.05  # the planted gap is seen


def test_group_without_positives_and_without_negatives_like_fairlearn():
    y_true, y_pred, groups = _binary_case(3, sizes=(20, 30, 200))
    y_true[groups == "a"] = 0  # no positives: TPR 0 by convention
    y_true[groups == "b"] = 1  # no negatives: FPR 0
    report = group_report(y_true, y_pred, groups, n_bootstrap=0)
    _assert_matches_fairlearn(report, y_true, y_pred, groups)
    assert report.per_group["a"]["tpr"] == 0 and report.per_group["a"]["positives"] == 0
    assert report.per_group["b"]["fpr"] == 0
    assert any("'a' has no positive" in note for note in report.notes)
    assert any("'b' has no negative" in note for note in report.notes)


def test_nobody_selected_gives_nan_ratio_like_fairlearn():
    y_true, _, groups = _binary_case(4, sizes=(10, 20))
    y_pred = np.zeros_like(y_true)
    report = group_report(y_true, y_pred, groups, n_bootstrap=50)
    _assert_matches_fairlearn(report, y_true, y_pred, groups)
    assert np.isnan(report.gaps["demographic_parity_ratio"]["value"])
    assert json.loads(json.dumps(report.to_dict()))["gaps"]["demographic_parity_ratio"]["value"] is None


def test_string_labels_and_a_chosen_positive_class():
    y_true, y_pred, groups = _binary_case(5)
    names = np.array(["spam", "ham"])
    report = group_report(names[y_true], names[y_pred], groups, pos_label="spam", n_bootstrap=0)
    assert report.labels == ["ham", "spam"]
    _assert_matches_fairlearn(report, names[y_true], names[y_pred], groups, pos_label="spam")
    default = group_report(names[y_true], names[y_pred], groups, n_bootstrap=0)
    assert default.positive_label == "spam"  # the last label in sorted order


def test_multiclass_is_one_vs_rest_per_class_and_worst_case():
    rng = np.random.default_rng(6)
    n, k = 1500, 4
    groups = rng.choice(["x", "y", "z"], n, p=[0.1, 0.3, 0.6])
    y_true = rng.integers(0, k, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k, n))
    y_pred[(groups == "x") & (rng.random(n) < 0.2)] = 2
    y_true[(groups == "y") & (y_true == 3)] = 1  # group y has no examples of class 3
    report = group_report(y_true, y_pred, groups, n_bootstrap=0)
    assert report.positive_label is None
    worst = {key: 0.0 for key in ("demographic_parity_difference", "equalized_odds_difference",
                                  "equal_opportunity_difference")}
    for c in range(k):  # class c against the rest, as a binary problem for fairlearn
        t, p = (y_true == c).astype(int), (y_pred == c).astype(int)
        gaps = _fairlearn_gaps(t, p, groups)
        frame = _fairlearn_frame(t, p, groups).by_group
        for key in worst:
            assert report.gaps[key]["per_class"][str(c)] == pytest.approx(gaps[key], abs=1e-12)
            worst[key] = max(worst[key], gaps[key])
        for name, row in report.per_group.items():
            for key in ("tpr", "fpr", "selection_rate"):
                assert row[key][str(c)] == pytest.approx(frame.loc[name, key], abs=1e-12)
    for key, value in worst.items():
        assert report.gaps[key]["value"] == pytest.approx(value, abs=1e-12)
    # precision / recall / F1: scikit-learn's macro average on each group
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macro = FM.MetricFrame(metrics={m.__name__: functools.partial(m, average="macro", zero_division=0)
                                        for m in (skm.precision_score, skm.recall_score, skm.f1_score)},
                               y_true=y_true, y_pred=y_pred, sensitive_features=groups).by_group
    for name, row in report.per_group.items():
        assert row["precision"] == pytest.approx(macro.loc[name, "precision_score"], abs=1e-12)
        assert row["recall"] == pytest.approx(macro.loc[name, "recall_score"], abs=1e-12)
        assert row["f1"] == pytest.approx(macro.loc[name, "f1_score"], abs=1e-12)
        assert row["accuracy"] == pytest.approx(skm.accuracy_score(y_true[groups == name], y_pred[groups == name]))


def _ece_reference(y_true, probs, bins=10):
    """Top-label ECE written out with a loop over bins."""
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf >= lo) & ((conf < hi) if b < bins - 1 else (conf <= hi))
        if inside.any():
            total += inside.sum() / len(conf) * abs((pred[inside] == y_true[inside]).mean() - conf[inside].mean())
    return total


def test_calibration_error_per_group():
    rng = np.random.default_rng(7)
    n, k = 800, 3
    groups = rng.choice(["a", "b"], n, p=[0.3, 0.7])
    logits = rng.normal(size=(n, k)) * np.where(groups == "a", 3.0, 1.0)[:, None]  # group a overconfident
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y_true = np.array([rng.choice(k, p=q) for q in probs])
    y_pred = probs.argmax(1)
    probs_a = probs.copy()
    probs_a[groups == "a"] = probs[groups == "a"] ** 0.3 / (probs[groups == "a"] ** 0.3).sum(1, keepdims=True)
    report = group_report(y_true, y_pred, groups, scores=probs_a, n_bootstrap=0)
    for name in ("a", "b"):
        m = groups == name
        assert report.per_group[name]["calibration_error"] == pytest.approx(_ece_reference(y_true[m], probs_a[m]))
    assert report.overall["calibration_error"] == pytest.approx(_ece_reference(y_true, probs_a))
    assert report.per_group["a"]["calibration_error"] > report.per_group["b"]["calibration_error"]
    # binary: 1-D scores are P(positive)
    t, p1 = (y_true == 0).astype(int), probs[:, 0]
    r1 = group_report(t, (p1 >= 0.5).astype(int), groups, scores=p1, n_bootstrap=0)
    both = np.stack([1 - p1, p1], 1)
    in_a = groups == "a"
    assert r1.per_group["a"]["calibration_error"] == pytest.approx(_ece_reference(t[in_a], both[in_a]))


def test_bootstrap_resamples_give_fairlearns_gaps_and_intervals_cover():
    y_true, y_pred, groups = _binary_case(8, sizes=(60, 80, 200))
    report = group_report(y_true, y_pred, groups, n_bootstrap=400, seed=3)
    again = group_report(y_true, y_pred, groups, n_bootstrap=400, seed=3)
    assert report.gaps == again.gaps  # seeded
    # the vectorised resampling: recompute a few resamples' gaps with fairlearn on the drawn examples
    codes = torch.tensor([report.groups.index(x) for x in groups])
    idx = stratified_resamples(codes, 3, 400, 3).numpy()
    for row in idx[:3]:
        assert sorted(groups[row].tolist()) == sorted(groups.tolist())  # group sizes are kept
    from fastlm.eval.fairness import _bootstrap_gaps, _example_features

    x = _example_features(torch.tensor(y_true), torch.tensor(y_pred), 2, None, 10)
    samples = _bootstrap_gaps(x, codes, 3, [1], True, 400, 3)
    for i in (0, 17, 399):
        expected = _fairlearn_gaps(y_true[idx[i]], y_pred[idx[i]], groups[idx[i]])
        for key, value in expected.items():
            assert samples[key][i].item() == pytest.approx(value, abs=1e-12)
    # the interval is the percentile interval of those samples, and it holds the point estimate here
    for key in ("demographic_parity_difference", "equalized_odds_difference"):
        lo, hi = np.quantile(samples[key].numpy(), [0.025, 0.975])
        assert report.gaps[key]["ci_low"] == pytest.approx(lo) and report.gaps[key]["ci_high"] == pytest.approx(hi)
        assert lo <= report.gaps[key]["value"] <= hi


def test_tests_detect_a_real_gap_and_not_a_null_one():
    rng = np.random.default_rng(9)
    n = 1200
    groups = rng.choice(["a", "b", "c"], n)
    y_true = rng.integers(0, 2, n)
    score = np.clip(0.5 + 0.3 * (y_true - 0.5) + rng.normal(0, 0.15, n), 0, 1)
    null = group_report(y_true, (score >= 0.5).astype(int), groups, scores=score, n_bootstrap=0)
    biased_score = np.clip(score + np.where(groups == "a", 0.15, 0.0), 0, 1)
    biased = group_report(y_true, (biased_score >= 0.5).astype(int), groups, scores=biased_score, n_bootstrap=0)
    assert biased.tests["selection_chi2"]["p_value"] < 1e-6
    assert biased.tests["score_mannwhitney"]["group_vs_rest"]["a"]["p_value"] < 1e-6
    assert biased.tests["score_kruskal"]["p_value"] < 1e-6
    assert null.tests["selection_chi2"]["p_value"] > 1e-3
    # the statistics are scipy's on the group x outcome table and on the scores
    table = np.array([[np.sum((groups == gname) & ((biased_score >= 0.5) == sel)) for sel in (False, True)]
                      for gname in ("a", "b", "c")])
    assert biased.tests["selection_chi2"]["statistic"] == pytest.approx(stats.chi2_contingency(table).statistic)
    u = stats.mannwhitneyu(biased_score[groups == "b"], biased_score[groups != "b"])
    assert biased.tests["score_mannwhitney"]["group_vs_rest"]["b"]["p_value"] == pytest.approx(u.pvalue)


def test_bad_inputs():
    with pytest.raises(ValueError, match="differ in length"):
        group_report([0, 1], [0], ["a", "b"])
    with pytest.raises(ValueError, match="not in labels"):
        group_report([0, 1], [0, 2], ["a", "b"], labels=[0, 1])
    with pytest.raises(ValueError, match="1-D scores"):
        group_report([0, 1, 2], [0, 1, 2], ["a", "b", "a"], scores=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="probabilities"):
        group_report([0, 1], [0, 1], ["a", "b"], scores=[0.1, 1.5])
    with pytest.raises(ValueError, match="pos_label"):
        group_report([0, 1], [0, 1], ["a", "b"], pos_label=3)
    single = group_report([0, 1, 1], [0, 1, 0], ["a", "a", "a"], n_bootstrap=10)
    assert single.gaps["equalized_odds_difference"]["value"] == 0 and single.tests["selection_chi2"] is None
