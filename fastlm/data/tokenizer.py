"""Byte-level BPE tokenizer (the `tokenizers` library), trained or loaded from tokenizer.json."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

EOS_TOKEN = "<|endoftext|>"
# End-of-text tokens of common tokenizers, in the order we look for them in a user's tokenizer.
EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "[SEP]")
MIN_VOCAB = 257  # 256 byte tokens + the end-of-text token


def train_bpe(texts: Iterable[str], vocab_size: int, *, length: int | None = None,
              show_progress: bool = False) -> Tokenizer:
    """Train a GPT-2 style byte-level BPE with `<|endoftext|>` (id 0) as its one special token.

    Every byte is in the initial alphabet, so any text encodes without an unknown token. On a
    small corpus the result can have fewer than `vocab_size` tokens (no pair left to merge).
    """
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
        raise ValueError(f"vocab_size must be an integer >= {MIN_VOCAB} "
                         f"(256 bytes + end-of-text), got {vocab_size!r}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
    tok.train_from_iterator(texts, trainer, length=length)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {str(path)!r}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the library raises a bare Exception on malformed files
        raise ValueError(f"cannot read tokenizer {str(path)!r}: {e}") from None


def find_eos_id(tok: Tokenizer, where: str = "tokenizer") -> int:
    """The id of the first end-of-text token in EOS_CANDIDATES; ValueError if it has none."""
    for token in EOS_CANDIDATES:
        token_id = tok.token_to_id(token)
        if token_id is not None:
            return token_id
    raise ValueError(f"{where} has no end-of-text token (looked for "
                     f"{', '.join(EOS_CANDIDATES)}); add one as a special token")


# The other special tokens of common tokenizers, looked up like EOS_CANDIDATES (for an HF export).
BOS_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")
PAD_CANDIDATES = ("<pad>", "[PAD]", "<|pad|>")
UNK_CANDIDATES = ("<unk>", "[UNK]")
ENCODER_CANDIDATES = {"pad_token": PAD_CANDIDATES, "unk_token": UNK_CANDIDATES, "cls_token": ("[CLS]", "<s>"),
                      "sep_token": ("[SEP]", "</s>"), "mask_token": ("[MASK]", "<mask>")}


def _first_token(tok: Tokenizer, candidates: Iterable[str]) -> str | None:
    return next((t for t in candidates if tok.token_to_id(t) is not None), None)


def special_tokens(tok: Tokenizer, encoder: bool = False, where: str = "tokenizer") -> dict[str, str]:
    """The tokenizer's special tokens as Hugging Face names them ({"eos_token": "<|endoftext|>", ...}).

    A causal LM gets bos/eos/unk/pad; one the tokenizer lacks is its end-of-text token, as in GPT-2
    (and a pad of end-of-text lets batched generation work). An encoder gets the ones it has of
    pad/unk/cls/sep/mask (fastlm's own [MASK]/[CLS]/[SEP] are ids after the vocabulary, not tokens)."""
    if encoder:
        found = {name: _first_token(tok, cands) for name, cands in ENCODER_CANDIDATES.items()}
        return {name: t for name, t in found.items() if t is not None}
    eos = tok.id_to_token(find_eos_id(tok, where))
    return {"bos_token": _first_token(tok, BOS_CANDIDATES) or eos, "eos_token": eos,
            "unk_token": _first_token(tok, UNK_CANDIDATES) or eos, "pad_token": _first_token(tok, PAD_CANDIDATES) or eos}
