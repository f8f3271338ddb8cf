"""What the attacks read from a model: the mean next-token loss of each token window, and the
log-perplexity (bits) of a text."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def token_nll(model, rows: list[list[int]], device, batch_size: int = 64) -> list[np.ndarray]:
    """-ln p(token | the tokens before it) for every token of each row after its first one (rows may
    differ in length: each batch is right-padded, the padding is never scored)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            width = max(map(len, chunk))
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            for r, row in enumerate(chunk):
                ids[r, :len(row)] = torch.as_tensor(row, dtype=torch.long)
            logits = model(ids.to(device)).float()
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:].to(device), reduction="none").cpu()
            out += [nll[r, :len(row) - 1].numpy().astype(np.float64) for r, row in enumerate(chunk)]
    finally:
        model.train(was_training)
    return out


def window_losses(model, windows: np.ndarray, device, batch_size: int = 64) -> np.ndarray:
    """The mean next-token loss (nats) of each (seq_len,) window, as in training."""
    return np.array([n.mean() for n in token_nll(model, [list(map(int, w)) for w in windows], device, batch_size)])


def log_perplexities(model, token_rows: list[list[int]], bos: int, device, batch_size: int = 256) -> np.ndarray:
    """Carlini's log-perplexity: -sum log2 p(token | the ones before) over every token of each row,
    given `bos` (the eos id: a canary follows a document's end in training)."""
    nll = token_nll(model, [[bos, *row] for row in token_rows], device, batch_size)
    return np.array([n.sum() / math.log(2) for n in nll])
