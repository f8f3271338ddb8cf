"""fastlm.eval.metrics against hand-computed values and the libraries that define each metric."""
import math
import sys

import numpy as np
import pytest

from fastlm.eval import metrics as M

# ---------------------------------------------------------------- hand-computed cases

def test_perplexity_forms():
    assert M.perplexity(math.log(4.0)) == pytest.approx(4.0)
    assert M.perplexity(3 * math.log(2.0), num_tokens=3) == pytest.approx(2.0)
    assert M.perplexity([math.log(2.0), math.log(8.0)]) == pytest.approx(4.0)  # geometric mean
    assert math.isfinite(M.perplexity(1e6))
    with pytest.raises(ValueError):
        M.perplexity([])


def test_classification_by_hand():
    y_true, y_pred = [0, 0, 1, 1], [0, 1, 1, 1]
    assert M.accuracy(y_true, y_pred) == 0.75
    # class 0: P 1, R 1/2, F 2/3; class 1: P 2/3, R 1, F 4/5
    assert M.f1(y_true, y_pred, average="macro") == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert M.f1(y_true, y_pred, average="micro") == pytest.approx(0.75)
    assert M.precision(y_true, y_pred, average="macro") == pytest.approx((1 + 2 / 3) / 2)
    assert M.recall(y_true, y_pred, average="macro") == pytest.approx((1 / 2 + 1) / 2)
    assert M.f1(y_true, y_pred) == pytest.approx(4 / 5)  # binary: the positive class, as sklearn
    assert M.confusion_matrix(y_true, y_pred).tolist() == [[1, 1], [0, 2]]
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_bleu_by_hand():
    hyp, ref = "the cat sat on the mat", "the cat sat on a mat"
    # n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty
    want = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert M.bleu([hyp], [ref]) == pytest.approx(want, abs=0.01)
    assert M.bleu([ref], [ref]) == pytest.approx(100.0)
    assert M.chrf([ref], [ref]) == pytest.approx(100.0)


def test_wer_cer_by_hand():
    assert M.wer("the cat sat", "the cat sit") == pytest.approx(1 / 3)
    assert M.wer(["a b", "c d e f"], ["a x", "c d e f"]) == pytest.approx(1 / 6)  # corpus level
    assert M.cer("abcd", "abed") == pytest.approx(1 / 4)


def test_rouge_by_hand():
    r = M.rouge(["the cat"], ["the cat sat"])
    assert r["rouge1"] == pytest.approx(0.8)  # P 1, R 2/3
    assert r["rouge2"] == pytest.approx(2 * 1 * 0.5 / 1.5)  # "the cat" of 1 and 2 bigrams
    assert r["rougeL"] == pytest.approx(0.8)


def test_squad_by_hand():
    assert M.exact_match(["The Cat."], ["cat"]) == 100.0
    assert M.exact_match(["a dog", "cat"], [["the dog", "dogs"], ["mouse"]]) == 50.0
    assert M.squad_f1(["the cat sat"], ["cat sat down"]) == pytest.approx(80.0)
    assert M.squad_f1(["x"], [["y", "x z"]]) == pytest.approx(100 * 2 / 3)  # best reference counts
    assert M.normalize_answer("  An   Apple, the end! ") == "apple end"


# ---------------------------------------------------------------- against the libraries

def test_classification_matches_sklearn():
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 4, 200))
    for average in ("macro", "micro", "weighted"):
        assert M.f1(y_true, y_pred, average=average) == pytest.approx(skm.f1_score(y_true, y_pred, average=average))
        assert M.precision(y_true, y_pred, average=average) == pytest.approx(
            skm.precision_score(y_true, y_pred, average=average))
        assert M.recall(y_true, y_pred, average=average) == pytest.approx(skm.recall_score(y_true, y_pred, average=average))
    np.testing.assert_allclose(M.f1(y_true, y_pred, average=None), skm.f1_score(y_true, y_pred, average=None))
    np.testing.assert_array_equal(M.confusion_matrix(y_true, y_pred), skm.confusion_matrix(y_true, y_pred))
    scores = rng.random((200, 4))
    scores /= scores.sum(1, keepdims=True)
    assert M.roc_auc(y_true, scores, multi_class="ovr") == pytest.approx(
        skm.roc_auc_score(y_true, scores, multi_class="ovr"))


def test_bleu_chrf_match_sacrebleu():
    import sacrebleu

    hyps = ["the quick brown fox jumps", "a cat is on the mat", "hello there world"]
    refs1 = ["the fast brown fox jumped", "the cat is on the mat", "hello world"]
    refs2 = ["a quick brown fox leaps", "there is a cat on the mat", "hi there world"]
    assert M.bleu(hyps, refs1) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs1]).score)
    assert M.bleu(hyps, [refs1, refs2]) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs1, refs2]).score)
    assert M.bleu(hyps, refs1, lowercase=True) == pytest.approx(
        sacrebleu.corpus_bleu(hyps, [refs1], lowercase=True).score)
    assert M.chrf(hyps, refs1) == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs1]).score)
    assert M.chrf(hyps, refs1, word_order=2) == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs1], word_order=2).score)
    with pytest.raises(ValueError, match="reference stream"):
        M.bleu(hyps, refs1[:2])
    with pytest.raises(TypeError):
        M.bleu("a string", ["a string"])


def test_rouge_matches_rouge_score():
    from rouge_score import rouge_scorer

    preds = ["police killed the gunman", "the cat was found under the bed"]
    refs = ["the gunman was shot down by police", "the cat was under the bed"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    got = M.rouge(preds, refs)
    for t in ("rouge1", "rouge2", "rougeL"):
        want = np.mean([scorer.score(r, p)[t].fmeasure for p, r in zip(preds, refs)])
        assert got[t] == pytest.approx(want)


def test_wer_cer_match_jiwer():
    import jiwer

    refs = ["hello world how are you", "speech recognition is fun"]
    hyps = ["hello word how you", "speech wreck ignition is fun fun"]
    assert M.wer(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps))
    assert M.cer(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps))


# ---------------------------------------------------------------- a missing extra

@pytest.mark.parametrize("call, package", [
    (lambda: M.bleu(["a"], ["a"]), "sacrebleu"),
    (lambda: M.wer("a", "a"), "jiwer"),
    (lambda: M.f1([0], [0]), "scikit-learn"),
    (lambda: M.rouge(["a"], ["a"]), "rouge-score"),
])
def test_missing_library_names_the_extra(monkeypatch, call, package):
    module = {"sacrebleu": "sacrebleu", "jiwer": "jiwer", "scikit-learn": "sklearn.metrics",
              "rouge-score": "rouge_score.rouge_scorer"}[package]
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    with pytest.raises(ImportError, match=rf"fastlm\[eval\].*{package}|{package}.*fastlm\[eval\]"):
        call()
