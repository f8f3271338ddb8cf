"""Statistical watermarks on generated text (Kirchenbauer et al. 2023, "A Watermark for Large Language Models").

    key = WatermarkKey.from_file("wm.key")               # `fastlm keygen wm.key`: base64 of 32 random bytes
    logits = key.bias(prev_tokens, logits)               # in the sampling step: green tokens get + delta
    r = key.detect(token_ids)                            # {"z": ..., "p_value": ..., "green": ..., "scored": ...}

For every context (the previous token) a keyed hash splits the vocabulary into a green list (a
fraction gamma) and a red list; generation adds delta to the green logits, so watermarked text holds
more green tokens than the gamma expected of text written without the key. Detection counts them
and reports the one-sided z-score (normal approximation) and its p-value.

The green list is a hash of (key, previous token, candidate token): the keyed codes of every token
as a context and as a candidate are computed once, and each sampling step adds delta to the whole
(batch, vocab) logits in one kernel (fastlm.ops.watermark_bias: C++ on CPU, Triton on CUDA) that mixes
a row's context code with each candidate's: no Python per token, no torch.randperm per step. The hash
(Wellons' lowbias32 mixer, fastlm.ops.reference_watermark.mix32) is a fast pseudo-random function,
not a cryptographic one: it hides the green lists from someone without the key who sees ordinary
amounts of text.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from fastlm import ops
from fastlm.ops.reference_watermark import MASK32
from fastlm.ops.reference_watermark import mix32 as _mix
from fastlm.train.errors import FastlmError

KEY_BYTES = 32


@dataclass(frozen=True)
class WatermarkKey:
    """A watermark: the secret, the green fraction gamma and the logit bias delta."""
    secret: bytes
    gamma: float = 0.25
    delta: float = 2.0

    def __post_init__(self):
        if len(self.secret) != KEY_BYTES:
            raise FastlmError(f"a watermark key is {KEY_BYTES} bytes, got {len(self.secret)}")
        if not 0 < self.gamma < 1:
            raise FastlmError(f"watermark gamma must be in (0, 1), got {self.gamma}")
        if not math.isfinite(self.delta) or self.delta < 0:
            raise FastlmError(f"watermark delta must be >= 0, got {self.delta}")

    @classmethod
    def from_file(cls, path: str | Path, gamma: float = 0.25, delta: float = 2.0) -> WatermarkKey:
        """A key file of `fastlm keygen` (base64 of 32 random bytes); FastlmError naming the problem."""
        try:
            text = Path(path).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as e:
            raise FastlmError(f"watermark key {str(path)!r}: cannot read it ({getattr(e, 'strerror', None) or e})") \
                from None
        try:
            secret = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise FastlmError(f"watermark key {str(path)!r}: not base64 text (write one with `fastlm keygen`)") \
                from None
        if len(secret) != KEY_BYTES:
            raise FastlmError(f"watermark key {str(path)!r}: {len(secret)} bytes, expected {KEY_BYTES} "
                              f"(write one with `fastlm keygen`)")
        return cls(secret, gamma, delta)

    # ---- the green lists ---------------------------------------------------------------------
    def _words(self) -> list[int]:
        """Four 32-bit words derived from the secret (domain-separated from its other uses)."""
        digest = hashlib.blake2b(b"fastlm-watermark-v1", key=self.secret, digest_size=16).digest()
        return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]

    @property
    def threshold(self) -> int:
        return round(self.gamma * 2**32)

    def context_seeds(self, prev: torch.Tensor) -> torch.Tensor:
        """The keyed seed of each context (the previous token ids, any shape), int64 in [0, 2^32)."""
        k = self._words()
        x = _mix(prev.long().bitwise_and(MASK32) ^ k[0])
        return _mix(x.bitwise_xor_(k[1]))

    def token_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """The keyed code of each candidate token id, int64 in [0, 2^32)."""
        k = self._words()
        x = _mix(tokens.long().bitwise_and(MASK32) ^ k[2])
        return _mix(x.bitwise_xor_(k[3]))

    def is_green(self, prev: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Whether each token is green after its previous token (broadcasting shapes): a bool tensor."""
        return _mix(self.context_seeds(prev) ^ self.token_codes(tokens)) < self.threshold

    def green_mask(self, prev: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """(B, vocab) bool: the green list of each row's context (prev: (B,) previous token ids)."""
        codes = self.token_codes(torch.arange(vocab_size, device=prev.device))
        return _mix(self.context_seeds(prev)[:, None] ^ codes[None, :]) < self.threshold

    # ---- generation and detection ------------------------------------------------------------
    def processor(self) -> WatermarkProcessor:
        return WatermarkProcessor(self)

    def detect(self, token_ids, unique: bool = True) -> dict:
        """z-score and one-sided p-value that token_ids (a 1-D sequence) carry this watermark.

        Each token after the first is scored against its predecessor. unique: count each (previous,
        token) pair once, so repeated text (code indentation, lists) does not inflate the z-score of
        text written without the key (Kirchenbauer et al. 2023b, "On the reliability of watermarks")."""
        ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
        pairs = torch.stack([ids[:-1], ids[1:]], dim=1) if ids.numel() > 1 else ids.new_zeros((0, 2))
        if unique and len(pairs):
            pairs = torch.unique(pairs, dim=0)
        n = len(pairs)
        if n == 0:
            raise FastlmError("the text has fewer than 2 tokens: nothing to score for a watermark")
        green = int(self.is_green(pairs[:, 0], pairs[:, 1]).sum())
        return {"z": z_score(green, n, self.gamma), "p_value": p_value(z_score(green, n, self.gamma)),
                "green": green, "scored": n, "gamma": self.gamma}


class WatermarkProcessor:
    """A logits processor for generation: logits (B, V) and the tokens so far (B, T) -> biased logits.
    delta is added to each row's green list (that of its last token), before temperature and top-k,
    as in Kirchenbauer et al. The keyed codes of every token as a candidate and as a context are
    computed once per vocabulary and device, so a step costs one lookup and one fused kernel."""

    def __init__(self, key: WatermarkKey):
        self.key = key
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def tables(self, vocab_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(context seeds, token codes), each (vocab_size,) int64."""
        if self._tables is None or self._tables[0].numel() != vocab_size or self._tables[0].device != device:
            ids = torch.arange(vocab_size, device=device)
            self._tables = (self.key.context_seeds(ids), self.key.token_codes(ids))
        return self._tables

    def __call__(self, tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        seeds, codes = self.tables(logits.shape[-1], logits.device)
        return ops.watermark_bias(logits, seeds[tokens[:, -1]], codes, self.key.threshold, self.key.delta)


def z_score(green: int, scored: int, gamma: float) -> float:
    """(green - gamma n) / sqrt(n gamma (1 - gamma)): green counts against a Binomial(n, gamma) null."""
    return (green - gamma * scored) / math.sqrt(scored * gamma * (1 - gamma))


def p_value(z: float) -> float:
    """One-sided: P(Z >= z) under the standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def read_token_ids(text_file: str | Path, run_dir: str | Path | None = None) -> list[int]:
    """The token ids of a text file: tokenized with run_dir's tokenizer, or (no run) read as ids."""
    path = Path(text_file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FastlmError(f"{path}: cannot read the text ({getattr(e, 'strerror', None) or e})") from None
    if run_dir is not None:
        from fastlm.data.tokenizer import load_tokenizer

        tokenizer = Path(run_dir) / "tokenizer.json"
        if not tokenizer.is_file():
            raise FastlmError(f"--run {run_dir}: no tokenizer.json there (expected a fastlm run directory)")
        return load_tokenizer(tokenizer).encode(text, add_special_tokens=False).ids
    try:
        return [int(word) for word in text.split()]
    except ValueError:
        raise FastlmError(f"{path} is text: pass --run RUN_DIR to tokenize it with that run's tokenizer "
                          f"(without --run the file must hold token ids)") from None
