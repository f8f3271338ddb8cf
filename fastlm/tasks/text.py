"""Tokenizing task text: the run's tokenizer (from init_from, data.tokenizer, or trained on the
task's training text) and right-padded batches."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

import torch
from tokenizers import Tokenizer

from fastlm.data.tokenizer import find_eos_id, load_tokenizer, train_bpe
from fastlm.train.errors import ConfigError


def task_tokenizer(texts: Sequence[str], vocab_size: int, model_vocab: int, init_tokenizer: Path | None,
                   data_tokenizer: str | None) -> Tokenizer:
    """The pretrained model's tokenizer, data.tokenizer, or a BPE trained on `texts`."""
    if data_tokenizer:
        tok = load_tokenizer(data_tokenizer)
    elif init_tokenizer is not None:
        tok = load_tokenizer(init_tokenizer)
    else:
        tok = train_bpe(texts, vocab_size)
    if tok.get_vocab_size() > model_vocab:
        raise ConfigError(f"the tokenizer has {tok.get_vocab_size()} tokens, more than model.vocab_size = "
                          f"{model_vocab} (set model.vocab_size or data.vocab_size)")
    find_eos_id(tok)  # the sequences end with it: fail now if the tokenizer has none
    return tok


def save_tokenizer(tok: Tokenizer, run_dir: Path, source: Path | None = None) -> None:
    if source is not None and Path(source).is_file():
        shutil.copyfile(source, run_dir / "tokenizer.json")
    else:
        tok.save(str(run_dir / "tokenizer.json"))


def encode(tok: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)]


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (B, T), attention_mask (B, T)) with every row right-padded to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask
