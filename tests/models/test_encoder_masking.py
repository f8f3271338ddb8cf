"""Masked-LM data (fastlm/data/masking.py): 80/10/10 statistics within binomial bounds, static vs
dynamic masking, whole-word masking, sentence order, and the loader."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastlm.data import BatchLoader
from fastlm.data.masking import (
    MaskedLMLoader,
    MaskingRule,
    SpecialTokens,
    mask_tokens,
    masked_eval_batches,
    sentence_order_example,
    word_start_table,
)

V = 1000
SPECIAL = SpecialTokens.after(V)


def within(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """count is within `sigmas` standard deviations of Binomial(n, p)'s mean."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_80_10_10_statistics_within_binomial_bounds():
    rng = np.random.default_rng(123)
    tokens = rng.integers(0, V, size=200_000)
    inputs, labels = mask_tokens(tokens, mask_token_id=SPECIAL.mask, random_vocab=V, rng=rng)
    selected = labels != -100
    n_sel = int(selected.sum())
    assert within(n_sel, tokens.size, 0.15)
    assert np.array_equal(labels[selected], tokens[selected])  # labels are the original tokens
    assert np.array_equal(inputs[~selected], tokens[~selected])  # the rest is untouched
    masked = selected & (inputs == SPECIAL.mask)
    kept = selected & (inputs == tokens)
    randomized = selected & ~masked & ~kept
    assert within(int(masked.sum()), n_sel, 0.8)
    # A random replacement equal to the original (probability 1/V) counts as kept.
    assert within(int(randomized.sum()), n_sel, 0.1 * (1 - 1 / V))
    assert within(int(kept.sum()), n_sel, 0.1 + 0.1 / V)
    assert inputs[randomized].min() >= 0 and inputs[randomized].max() < V  # only real tokens
    assert not (inputs == SPECIAL.mask)[~selected].any()


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_mask_prob_is_honoured(p):
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, V, size=50_000)
    _, labels = mask_tokens(tokens, mask_token_id=SPECIAL.mask, random_vocab=V, rng=rng, mask_prob=p)
    assert within(int((labels != -100).sum()), tokens.size, p)


def test_protected_positions_are_never_selected():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, V, size=10_000)
    protected = np.zeros(tokens.size, dtype=bool)
    protected[::3] = True
    inputs, labels = mask_tokens(tokens, mask_token_id=SPECIAL.mask, random_vocab=V, rng=rng, protected=protected)
    assert (labels[protected] == -100).all() and np.array_equal(inputs[protected], tokens[protected])
    assert within(int((labels != -100).sum()), int((~protected).sum()), 0.15)


def test_whole_word_masking_selects_whole_words():
    rng = np.random.default_rng(1)
    word_starts = np.zeros(V, dtype=bool)
    word_starts[: V // 3] = True  # ids below V/3 begin a word, the others continue one
    tokens = rng.integers(0, V, size=60_000)
    tokens[0] = 0
    _, labels = mask_tokens(tokens, mask_token_id=SPECIAL.mask, random_vocab=V, rng=rng, word_starts=word_starts)
    word = np.cumsum(word_starts[tokens]) - 1
    selected = labels != -100
    per_word = np.bincount(word, weights=selected)
    sizes = np.bincount(word)
    assert set(np.unique(per_word / sizes)) <= {0.0, 1.0}  # every word all or nothing
    assert within(int((per_word > 0).sum()), sizes.size, 0.15)  # 15% of the words
    assert sizes[per_word > 0].mean() > 1.5  # multi-token words really are masked together


def test_word_start_table_of_byte_level_and_wordpiece_tokens():
    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    table = word_start_table(Tok({"Ġthe": 0, "ing": 1, ".": 2, "Ċ": 3, "##ly": 4, "quick": 5}), 6)
    assert table.tolist() == [True, False, True, True, False, False]


def rule(masking: str, **kw) -> MaskingRule:
    return MaskingRule(SPECIAL, random_vocab=V, seed=5, masking=masking, **kw)


def test_static_masking_is_fixed_per_example_and_dynamic_is_fresh_each_time():
    windows = torch.randint(0, V, (8, 64))
    ids = np.arange(100, 108)
    static = [rule("static").batch(windows, ids, step) for step in (0, 1, 7)]
    dynamic = [rule("dynamic").batch(windows, ids, step) for step in (0, 1, 7)]
    for b in static[1:]:
        assert torch.equal(b.input_ids, static[0].input_ids) and torch.equal(b.labels, static[0].labels)
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert not torch.equal(dynamic[a].labels, dynamic[b].labels)
    # Both are deterministic, and the examples of one batch get different masks.
    assert torch.equal(rule("dynamic").batch(windows, ids, 1).labels, dynamic[1].labels)
    assert not torch.equal(static[0].labels[0], static[0].labels[1])
    # A different example id (another window) gets another static mask.
    assert not torch.equal(rule("static").batch(windows, ids + 1, 0).labels, static[0].labels)


def test_sentence_order_examples():
    rng = np.random.default_rng(3)
    swapped = 0
    for _ in range(400):
        tokens = rng.integers(0, V, size=29)
        ids, types, protected, label = sentence_order_example(tokens, SPECIAL, rng)
        assert ids.size == 32 and ids[0] == SPECIAL.cls and ids[-1] == SPECIAL.sep
        seps = np.flatnonzero(ids == SPECIAL.sep)
        assert seps.size == 2 and protected.sum() == 3 and protected[[0, *seps]].all()
        a, b = ids[1:seps[0]], ids[seps[0] + 1:-1]
        assert (types[:seps[0] + 1] == 0).all() and (types[seps[0] + 1:] == 1).all()
        assert np.array_equal(np.concatenate([b, a] if label else [a, b]), tokens)
        swapped += label
    assert within(swapped, 400, 0.5)
    b = rule("dynamic", sentence_order=True).batch(torch.randint(0, V, (4, 32)), range(4), 0)
    assert b.input_ids.shape == b.token_type_ids.shape == (4, 32) and b.sentence_order_labels.shape == (4,)
    specials = (b.input_ids == SPECIAL.cls) | (b.input_ids == SPECIAL.sep)
    assert (b.labels[specials] == -100).all()


def test_loader_masks_the_windows_of_the_plain_loader():
    tokens = np.random.default_rng(0).integers(0, V, size=5000).astype(np.uint16)
    kw = dict(seq_len=32, global_batch_size=8, micro_batch_size=4, seed=11, prefetch=0)
    plain = BatchLoader(tokens, **kw)
    masked = MaskedLMLoader(tokens, rule=rule("static"), **kw)
    for step in (0, 3):
        for x, mb in zip(plain.batch_for_step(step), masked.batch_for_step(step)):
            sel = mb.labels != -100
            assert torch.equal(mb.labels[sel], x[sel])
            assert torch.equal(mb.input_ids[~sel], x[~sel])
    assert torch.equal(masked.next()[0].labels, masked.batch_for_step(0)[0].labels)
    val = masked_eval_batches(tokens, rule=rule("dynamic"), seq_len=32, batch_size=4, num_batches=2)
    again = masked_eval_batches(tokens, rule=rule("dynamic"), seq_len=32, batch_size=4, num_batches=2)
    assert len(val) == 2 and all(torch.equal(a.labels, b.labels) for a, b in zip(val, again))
