"""The hmm benchmark suite runs, compares with hmmlearn from identical parameters, and is registered."""
import pytest

from fastlm.bench.registry import Options, get_suite

pytest.importorskip("hmmlearn")


def test_hmm_suite_reports_speedups_and_matching_trajectories():
    suite = get_suite("hmm")
    assert suite.baseline == "hmmlearn CategoricalHMM"
    from fastlm.bench.suites import hmm

    rows = hmm.measure(Options(quick=True, repeat=1), shapes=[(3, 7, 3, 40)], n_iter=3)
    assert [r["op"] for r in rows] == ["fit", "forward", "viterbi"]
    for row in rows:
        assert row["speedup"] > 0 and row["fastlm_tok_s"] > 0 and row["hmmlearn_tok_s"] > 0 and row["threads"] >= 1
    fit = rows[0]
    # same start, same EM: the log-likelihood trajectories agree to rounding
    assert fit["max_rel_diff_history"] < 1e-10
    assert fit["loglik_fastlm"] == pytest.approx(fit["loglik_hmmlearn"], rel=1e-10)
