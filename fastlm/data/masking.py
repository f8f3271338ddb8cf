"""Masked-LM data: BERT's 80/10/10 masking, static or dynamic, whole-word masking, sentence order.

    inputs, labels = mask_tokens(row, mask_token_id=..., random_vocab=..., rng=np.random.default_rng(0))
    loader = MaskedLMLoader(tokens, special=SpecialTokens.after(vocab), masking="dynamic", ...)

Each selected token (mask_prob of the candidates, 15% by default) becomes [MASK] with probability
0.8, a random token with 0.1, and stays itself with 0.1; its label is the original token, every
other label is -100. The random draws of a sequence come from a generator seeded by
(seed, example) for static masking (BERT: the same mask every time the example is seen) or by
(seed, example, step) for dynamic masking (RoBERTa: a fresh mask each time). An example is a
training window, named by where it starts in the token stream.

fastlm's own corpus tokenizer has no [MASK]/[CLS]/[SEP]: they take the three ids after its vocabulary
(a pretrained model's tokenizer brings its own, see SpecialTokens.of).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from fastlm.data.loader import BatchLoader, _windows, eval_batches

NUM_SPECIAL_TOKENS = 3  # [MASK], [CLS], [SEP] after the tokenizer's vocabulary
MASKINGS = ("static", "dynamic")


class SpecialTokens(NamedTuple):
    mask: int
    cls: int
    sep: int

    @classmethod
    def after(cls, vocab_size: int) -> "SpecialTokens":
        """The ids right after a tokenizer of vocab_size tokens."""
        return cls(vocab_size, vocab_size + 1, vocab_size + 2)

    @classmethod
    def of(cls, tokenizer, vocab_size: int) -> "SpecialTokens":
        """The tokenizer's own [MASK]/[CLS]/[SEP] (BERT) or <mask>/<s>/</s> (RoBERTa) when it has
        all three (a pretrained model's tokenizer), else the ids after its vocabulary."""
        for names in (("[MASK]", "[CLS]", "[SEP]"), ("<mask>", "<s>", "</s>")):
            ids = [tokenizer.token_to_id(n) for n in names]
            if all(i is not None for i in ids):
                return cls(*ids)
        return cls.after(vocab_size)


class MaskedBatch(NamedTuple):
    """A micro-batch for EncoderForMaskedLM: model(**batch.kwargs())."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    token_type_ids: torch.Tensor | None = None
    sentence_order_labels: torch.Tensor | None = None

    def to(self, device, non_blocking: bool = False) -> "MaskedBatch":
        return MaskedBatch(*(t.to(device, non_blocking=non_blocking) if t is not None else None for t in self))

    def kwargs(self) -> dict:
        return {k: v for k, v in self._asdict().items() if v is not None}


# ---------------------------------------------------------------- masking one sequence

def mask_tokens(tokens: np.ndarray, *, mask_token_id: int, random_vocab: int, rng: np.random.Generator,
                mask_prob: float = 0.15, protected: np.ndarray | None = None,
                word_starts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) of one 1-D token sequence.

    random_vocab: random replacements are drawn from [0, random_vocab) (the tokenizer's own tokens).
    protected: bool per position that is never selected ([CLS], [SEP]).
    word_starts: bool per token id, True where a token begins a word: whole-word masking selects
    words (each with probability mask_prob) and masks all of their tokens.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    n = tokens.shape[0]
    candidates = np.ones(n, dtype=bool) if protected is None else ~protected
    if word_starts is None:
        selected = rng.random(n) < mask_prob
    else:
        known = tokens < word_starts.shape[0]  # ids past the table ([CLS], [SEP]) stand alone
        starts = ~candidates | ~known
        starts[known] |= word_starts[tokens[known]]
        starts[0] = True
        word = np.cumsum(starts) - 1
        selected = (rng.random(int(word[-1]) + 1 if n else 0) < mask_prob)[word]
    selected &= candidates
    action = rng.random(n)  # < 0.8: [MASK]; < 0.9: random token; else unchanged
    inputs = tokens.copy()
    inputs[selected & (action < 0.8)] = mask_token_id
    randomize = selected & (action >= 0.8) & (action < 0.9)
    inputs[randomize] = rng.integers(0, random_vocab, size=int(randomize.sum()))
    labels = np.where(selected, tokens, -100)
    return inputs, labels


def sentence_order_example(tokens: np.ndarray, special: SpecialTokens, rng: np.random.Generator):
    """ALBERT's sentence-order prediction: [CLS] A [SEP] B [SEP] from two consecutive segments of
    tokens, swapped (label 1) with probability 1/2. Returns (ids, token types, protected, label);
    the ids are 3 tokens longer than `tokens`."""
    n = tokens.shape[0]
    if n < 2:
        raise ValueError("sentence-order prediction needs sequences of at least 5 tokens (seq_len >= 5)")
    cut = int(rng.integers(1, n))
    a, b = tokens[:cut], tokens[cut:]
    swapped = bool(rng.random() < 0.5)
    if swapped:
        a, b = b, a
    ids = np.concatenate([[special.cls], a, [special.sep], b, [special.sep]]).astype(np.int64)
    types = np.zeros(n + 3, dtype=np.int64)
    types[len(a) + 2:] = 1
    protected = np.zeros(n + 3, dtype=bool)
    protected[[0, len(a) + 1, n + 2]] = True
    return ids, types, protected, int(swapped)


def word_start_table(tokenizer, vocab_size: int) -> np.ndarray:
    """True for token ids that begin a word: byte-level BPE tokens starting with a space ('Ġ') or
    newline ('Ċ') or with a non-alphanumeric character, WordPiece tokens not starting with '##'."""
    table = np.ones(vocab_size, dtype=bool)
    for token, i in tokenizer.get_vocab().items():
        if i >= vocab_size or not token:
            continue
        if token.startswith("##"):
            table[i] = False
        elif token[0] in "ĠĊ" or not token[0].isalnum():
            table[i] = True
        else:
            table[i] = False
    return table


# ---------------------------------------------------------------- batches

class MaskingRule(NamedTuple):
    special: SpecialTokens
    random_vocab: int
    seed: int
    masking: str = "dynamic"
    mask_prob: float = 0.15
    word_starts: np.ndarray | None = None
    sentence_order: bool = False

    def example(self, window: np.ndarray, example_id: int, step: int) -> tuple:
        """(inputs, labels, token types or None, sentence-order label or None) of one window."""
        key = [self.seed, int(example_id)] if self.masking == "static" else [self.seed, int(example_id), int(step)]
        rng = np.random.default_rng(key)
        types = order = protected = None
        if self.sentence_order:
            window, types, protected, order = sentence_order_example(window[:-3], self.special, rng)
        inputs, labels = mask_tokens(window, mask_token_id=self.special.mask, random_vocab=self.random_vocab, rng=rng,
                                     mask_prob=self.mask_prob, protected=protected, word_starts=self.word_starts)
        return inputs, labels, types, order

    def batch(self, windows: torch.Tensor, example_ids, step: int) -> MaskedBatch:
        rows = [self.example(w, e, step) for w, e in zip(windows.numpy(), example_ids)]
        inputs = torch.from_numpy(np.stack([r[0] for r in rows]))
        labels = torch.from_numpy(np.stack([r[1] for r in rows]))
        if not self.sentence_order:
            return MaskedBatch(inputs, labels)
        types = torch.from_numpy(np.stack([r[2] for r in rows]))
        return MaskedBatch(inputs, labels, types, torch.tensor([r[3] for r in rows]))


class MaskedLMLoader(BatchLoader):
    """BatchLoader whose micro-batches are MaskedBatch (same windows, same determinism and resume)."""

    def __init__(self, tokens, *, rule: MaskingRule, **kwargs):
        super().__init__(tokens, **kwargs)
        self.rule = rule

    def batch_for_step(self, step: int) -> list[MaskedBatch]:
        starts = self.window_starts(step)
        windows = _windows(self.tokens, starts, self.seq_len)
        if len(starts) == 0:  # poisson sampling gave this rank nothing: one empty micro-batch (see BatchLoader)
            return [windows]
        mb = self.micro_batch_size
        return [self.rule.batch(windows[i:i + mb], starts[i:i + mb], step) for i in range(0, len(starts), mb)]


def masked_eval_batches(tokens, *, rule: MaskingRule, seq_len: int, batch_size: int,
                        num_batches: int | None) -> list[MaskedBatch]:
    """eval_batches with a fixed (static) mask: the same masked tokens at every evaluation."""
    fixed = rule._replace(masking="static")
    out, first = [], 0
    for windows in eval_batches(tokens, seq_len=seq_len, batch_size=batch_size, num_batches=num_batches):
        out.append(fixed.batch(windows, range(first, first + len(windows)), step=0))
        first += len(windows)
    return out
