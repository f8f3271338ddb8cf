"""Evaluation metrics, named and called like the libraries that define them.

    from fastlm.eval.metrics import bleu, wer, f1
    bleu(["the cat sat"], ["the cat sat down"])        # sacrebleu corpus BLEU, 0-100
    wer("the cat sat", "the cat sit")                  # jiwer: reference first
    f1([0, 1, 1], [0, 1, 0], average="macro")          # scikit-learn

Classification metrics come from scikit-learn, BLEU and chrF from sacrebleu, ROUGE from
rouge-score, WER and CER from jiwer (`pip install 'fastlm[eval]'`); exact match and SQuAD F1
follow the official SQuAD v1.1 evaluation script, and perplexity is exp(mean NLL).
"""
from __future__ import annotations

import collections
import importlib
import math
import re
import string
from typing import Iterable, Sequence

EXTRA = "fastlm[eval]"


def _require(module: str, package: str):
    """Import an optional dependency, or say which extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this metric needs the '{package}' package: pip install '{EXTRA}' "
                          f"(or pip install {package})") from None


# ---------------------------------------------------------------- language modelling

def perplexity(nll: float | Sequence[float], num_tokens: int | None = None) -> float:
    """exp of the mean negative log-likelihood (natural log).

    nll: a mean loss; or a summed loss with num_tokens; or a sequence of per-token losses.
    """
    if isinstance(nll, (int, float)):
        mean = nll / num_tokens if num_tokens is not None else float(nll)
    else:
        values = [float(v) for v in nll]
        if not values:
            raise ValueError("perplexity of no tokens")
        mean = sum(values) / (num_tokens if num_tokens is not None else len(values))
    return math.exp(min(mean, 700.0))  # past exp(709) a float overflows


# ---------------------------------------------------------------- classification (scikit-learn)

def _sk_metrics():
    return _require("sklearn.metrics", "scikit-learn")


def accuracy(y_true, y_pred) -> float:
    return float(_sk_metrics().accuracy_score(y_true, y_pred))


def precision(y_true, y_pred, *, labels=None, average: str | None = "binary", zero_division=0.0):
    """sklearn.metrics.precision_score (a float, or an array with average=None)."""
    return _maybe_float(_sk_metrics().precision_score(y_true, y_pred, labels=labels, average=average,
                                                      zero_division=zero_division))


def recall(y_true, y_pred, *, labels=None, average: str | None = "binary", zero_division=0.0):
    return _maybe_float(_sk_metrics().recall_score(y_true, y_pred, labels=labels, average=average,
                                                   zero_division=zero_division))


def f1(y_true, y_pred, *, labels=None, average: str | None = "binary", zero_division=0.0):
    """sklearn.metrics.f1_score: average = "binary" | "micro" | "macro" | "weighted" | None."""
    return _maybe_float(_sk_metrics().f1_score(y_true, y_pred, labels=labels, average=average,
                                               zero_division=zero_division))


def confusion_matrix(y_true, y_pred, *, labels=None):
    """sklearn.metrics.confusion_matrix: rows are true labels, columns predicted ones."""
    return _sk_metrics().confusion_matrix(y_true, y_pred, labels=labels)


def roc_auc(y_true, y_score, *, average: str | None = "macro", multi_class: str = "raise", labels=None):
    """sklearn.metrics.roc_auc_score. Several classes: y_score (n, classes) and multi_class="ovr"/"ovo"."""
    return _maybe_float(_sk_metrics().roc_auc_score(y_true, y_score, average=average, multi_class=multi_class,
                                                    labels=labels))


def _maybe_float(value):
    return float(value) if getattr(value, "ndim", 0) == 0 else value


# ---------------------------------------------------------------- translation (sacrebleu)

def _reference_streams(hypotheses: Sequence[str], references) -> list[list[str]]:
    """sacrebleu's layout (a list of reference streams, each one string per hypothesis), or one
    reference string per hypothesis."""
    if isinstance(hypotheses, str):
        raise TypeError("hypotheses must be a list of strings, not one string")
    references = list(references)
    if all(isinstance(r, str) for r in references):
        references = [references]
    for stream in references:
        if len(stream) != len(hypotheses):
            raise ValueError(f"a reference stream has {len(stream)} sentences for {len(hypotheses)} hypotheses")
    return [list(s) for s in references]


def bleu(hypotheses: Sequence[str], references, **kwargs) -> float:
    """sacrebleu.corpus_bleu(hypotheses, references).score, on the 0-100 scale.

    references: one string per hypothesis, or sacrebleu's list of reference streams. kwargs go
    to sacrebleu (tokenize="13a", lowercase=False, smooth_method="exp", ...).
    """
    sacrebleu = _require("sacrebleu", "sacrebleu")
    return float(sacrebleu.corpus_bleu(list(hypotheses), _reference_streams(hypotheses, references), **kwargs).score)


def chrf(hypotheses: Sequence[str], references, **kwargs) -> float:
    """sacrebleu.corpus_chrf (chrF, 0-100); word_order=2 gives chrF++."""
    sacrebleu = _require("sacrebleu", "sacrebleu")
    return float(sacrebleu.corpus_chrf(list(hypotheses), _reference_streams(hypotheses, references), **kwargs).score)


# ---------------------------------------------------------------- summarization (rouge-score)

def rouge(predictions: Sequence[str], references: Sequence[str],
          rouge_types: Iterable[str] = ("rouge1", "rouge2", "rougeL"), use_stemmer: bool = False) -> dict[str, float]:
    """Mean ROUGE F-measure (0-1) of each type over the pairs, as rouge_score's RougeScorer computes it."""
    rouge_scorer = _require("rouge_score.rouge_scorer", "rouge-score")
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    rouge_types = list(rouge_types)
    scorer = rouge_scorer.RougeScorer(rouge_types, use_stemmer=use_stemmer)
    totals = dict.fromkeys(rouge_types, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # rouge_score takes (target, prediction)
        for t in rouge_types:
            totals[t] += scores[t].fmeasure
    n = max(1, len(predictions))
    return {t: totals[t] / n for t in rouge_types}


# ---------------------------------------------------------------- speech (jiwer)

def wer(reference: str | Sequence[str], hypothesis: str | Sequence[str]) -> float:
    """jiwer.wer: word error rate over all pairs (errors / reference words)."""
    return float(_require("jiwer", "jiwer").wer(reference, hypothesis))


def cer(reference: str | Sequence[str], hypothesis: str | Sequence[str]) -> float:
    """jiwer.cer: character error rate."""
    return float(_require("jiwer", "jiwer").cer(reference, hypothesis))


# ---------------------------------------------------------------- question answering (SQuAD v1.1)

def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, squeeze whitespace (SQuAD v1.1)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _exact(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def _token_f1(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(gold)
    return 2 * p * r / (p + r)


def _over_answers(score, predictions, references) -> float:
    predictions = [predictions] if isinstance(predictions, str) else list(predictions)
    if isinstance(references, str):
        references = [references]
    references = list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    total = 0.0
    for pred, refs in zip(predictions, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        total += max(score(pred, r) for r in refs)  # the best of the gold answers counts
    return 100.0 * total / len(predictions)


def exact_match(predictions: str | Sequence[str], references) -> float:
    """Percentage of predictions equal to one of their references after SQuAD normalization.

    references: one string per prediction, or a list of acceptable answers per prediction.
    """
    return _over_answers(_exact, predictions, references)


def squad_f1(predictions: str | Sequence[str], references) -> float:
    """SQuAD token-overlap F1 (0-100), the best over each prediction's references."""
    return _over_answers(_token_f1, predictions, references)


__all__ = ["perplexity", "accuracy", "precision", "recall", "f1", "confusion_matrix", "roc_auc", "bleu",
           "chrf", "rouge", "wer", "cer", "exact_match", "squad_f1", "normalize_answer"]
