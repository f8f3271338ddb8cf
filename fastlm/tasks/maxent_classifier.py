"""The maximum-entropy text classifier of `task.model = "maxent"`: multinomial logistic regression
over hashed unigram and bigram features of the token ids.

    features = text_features(ids, num_buckets)           # bucket of every unigram and bigram (ngram_hash)
    model = MaxEntClassifier(num_buckets, num_labels)    # forward(batch) -> {"logits", "loss"}

score(label | text) = bias[label] + sum over the text's n-grams g of weight[hash(g), label]: an
nn.EmbeddingBag-style sum (F.embedding_bag, mode "sum") of the feature rows. The weight matrix is
2-D, so the task loop's AdamW decays it (train.weight_decay: the L2 penalty); the bias is not
decayed (as scikit-learn leaves the intercept unpenalized). benchmarks/maxent_classifier.py fits
scikit-learn's LogisticRegression on exactly these features for comparison.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastlm.models.ngram_hash import ngram_feature_hashes

ORDERS = (1, 2)  # unigrams and bigrams


def text_features(ids: list[int], num_buckets: int) -> list[int]:
    """The buckets of every unigram and bigram of ids (with repeats: a feature's count is its weight)."""
    return ngram_feature_hashes(ids, num_buckets, ORDERS)


def pad_features(rows: list[list[int]], num_buckets: int) -> torch.Tensor:
    """(N, longest) int64, right-padded with num_buckets (the padding row that F.embedding_bag skips)."""
    width = max(1, max((len(r) for r in rows), default=0))
    out = torch.full((len(rows), width), num_buckets, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


@dataclass
class HashedFeatureBody:
    """What the task loop needs of a maxent classifier's "body" (it has no pretrained part): the
    vocabulary its tokenizer is trained to (config.vocab_size)."""

    vocab_size: int
    num_buckets: int

    @property
    def config(self) -> HashedFeatureBody:
        return self


class MaxEntClassifier(nn.Module):
    """weight (num_buckets + 1, num_labels) (the last row: padding, always zero) and bias (num_labels).

    forward(batch) with batch["features"] (N, L) from pad_features -> {"logits" (N, num_labels) fp32,
    "loss" (mean cross-entropy, when batch has "labels")}.
    """

    def __init__(self, num_buckets: int, num_labels: int):
        super().__init__()
        if num_buckets < 1 or num_labels < 2:
            raise ValueError(f"MaxEntClassifier: expected num_buckets >= 1 and num_labels >= 2, "
                             f"got {num_buckets} and {num_labels}")
        self.num_buckets = num_buckets
        self.weight = nn.Parameter(torch.zeros(num_buckets + 1, num_labels))  # zero start: uniform
        self.bias = nn.Parameter(torch.zeros(num_labels))

    def forward(self, batch: dict) -> dict:
        features = batch["features"]
        logits = F.embedding_bag(features, self.weight, mode="sum", padding_idx=self.num_buckets) + self.bias
        logits = logits.float()
        out = {"logits": logits}
        if "labels" in batch:
            out["loss"] = F.cross_entropy(logits, batch["labels"])
        return out
