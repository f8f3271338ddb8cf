"""Probe scoring against one-sentence-at-a-time references: log-likelihoods of a decoder (against
F.cross_entropy on each unpadded sentence) and pseudo-log-likelihoods of an encoder (against a loop
that masks one token per forward)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastlm.fairness.scoring import log_likelihoods, pseudo_log_likelihoods
from fastlm.models import GPT, EncoderConfig, EncoderForMaskedLM, GPTConfig, RecurrentConfig, RecurrentLM

ROWS = [[5, 9, 3], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [30, 31, 8, 8, 2]]


@pytest.mark.parametrize("family", ["gpt2", "llama", "lstm"])
def test_log_likelihood_equals_per_sentence_cross_entropy(family):
    if family == "lstm":  # right padding leaves a causal recurrent model's earlier outputs alone too
        model = RecurrentLM(RecurrentConfig(family="lstm", vocab_size=40, n_layer=2, d_model=32))
    else:
        model = GPT(GPTConfig(family=family, vocab_size=40, n_layer=2, n_head=2, d_model=32, max_seq_len=32))
    start = 0
    batched = log_likelihoods(model, ROWS, start, torch.device("cpu"), batch_size=3)  # a padded batch, then one more
    for row, got in zip(ROWS, batched):
        ids = torch.tensor([[start, *row]])
        with torch.no_grad():
            logits = model(ids)[0].double()
        expected = -F.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum").item()
        assert got == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("family, wrap", [("bert", False), ("roberta", True)])
def test_pseudo_log_likelihood_batched_equals_one_token_at_a_time(family, wrap):
    config = EncoderConfig(family=family, vocab_size=48, n_layer=2, n_head=2, d_model=32, max_seq_len=32)
    model = EncoderForMaskedLM(config).eval()
    mask_id, prefix, suffix = 45, [46] if wrap else [], [47] if wrap else []
    for max_rows in (512, 6):  # all sentences in one forward; a few per forward (and one longer than max_rows)
        batched = pseudo_log_likelihoods(model, ROWS, mask_id, torch.device("cpu"), prefix, suffix, max_rows=max_rows)
        for row, got in zip(ROWS, batched):
            expected = 0.0
            for t in range(len(row)):
                ids = torch.tensor([[*prefix, *row, *suffix]])
                ids[0, len(prefix) + t] = mask_id
                with torch.no_grad():
                    logits = model(ids)[0, len(prefix) + t].double()
                expected += torch.log_softmax(logits, -1)[row[t]].item()
            assert got == pytest.approx(expected, abs=1e-4), (max_rows, row)


def test_scores_ignore_neighbours_in_the_batch():
    model = GPT(GPTConfig(family="llama", vocab_size=40, n_layer=1, n_head=2, d_model=16, max_seq_len=32))
    alone = log_likelihoods(model, [ROWS[0]], 0, torch.device("cpu"))
    together = log_likelihoods(model, ROWS, 0, torch.device("cpu"))
    assert np.isclose(alone[0], together[0], atol=1e-5)
