"""How a language model scores a sentence, batched.

- Decoders (GPT, recurrent): the log-likelihood sum_t log p(x_t | x_<t), after a start token.
- Encoders (masked LM): the pseudo-log-likelihood sum_t log p(x_t | x with x_t masked) (Salazar
  et al., 2020): a sentence of n tokens becomes n copies, copy t masked at t, all in one forward
  (several sentences share a forward up to `max_rows` copies; the padding is masked out).
"""
from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def log_likelihoods(model, rows: list[list[int]], start_id: int, device, batch_size: int = 64) -> np.ndarray:
    """sum_t ln p(row[t] | start_id, row[:t]) of each row (float64), rows right-padded per batch."""
    was_training = model.training
    model.eval()
    out = np.zeros(len(rows))
    try:
        for i in range(0, len(rows), batch_size):
            chunk = [[start_id, *row] for row in rows[i:i + batch_size]]
            ids = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)
            for r, row in enumerate(chunk):
                ids[r, :len(row)] = torch.as_tensor(row)
            ids = ids.to(device)
            logprobs = torch.log_softmax(model(ids).double(), dim=-1)[:, :-1]
            picked = logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1).cpu()
            for r, row in enumerate(chunk):
                out[i + r] = float(picked[r, :len(row) - 1].sum())
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def pseudo_log_likelihoods(model, rows: list[list[int]], mask_id: int, device, prefix: list[int] = (),
                           suffix: list[int] = (), max_rows: int = 512) -> np.ndarray:
    """sum_t ln p(row[t] | the row with row[t] masked) of each row (float64), for an
    EncoderForMaskedLM. `prefix`/`suffix` (e.g. [CLS] and [SEP]) surround every copy and are
    never masked or scored."""
    was_training = model.training
    model.eval()
    out = np.zeros(len(rows))
    try:
        start = 0
        while start < len(rows):
            stop, copies = start, 0  # the sentences of this forward: at least one, else up to max_rows copies
            while stop < len(rows) and (stop == start or copies + len(rows[stop]) <= max_rows):
                copies += len(rows[stop])
                stop += 1
            out[start:stop] = _pll_forward(model, rows[start:stop], mask_id, device, list(prefix), list(suffix))
            start = stop
    finally:
        model.train(was_training)
    return out


def _pll_forward(model, rows, mask_id, device, prefix, suffix) -> np.ndarray:
    width = len(prefix) + max(map(len, rows)) + len(suffix)
    n = sum(map(len, rows))
    ids = torch.zeros(n, width, dtype=torch.long)
    attention = torch.zeros(n, width, dtype=torch.long)
    at = torch.zeros(n, dtype=torch.long)       # the masked position of each copy
    target = torch.zeros(n, dtype=torch.long)   # the token it hides
    owner = []
    r = 0
    for s, row in enumerate(rows):
        full = torch.as_tensor([*prefix, *row, *suffix], dtype=torch.long)
        for t in range(len(row)):
            ids[r, :len(full)] = full
            attention[r, :len(full)] = 1
            at[r], target[r] = len(prefix) + t, row[t]
            ids[r, at[r]] = mask_id
            owner.append(s)
            r += 1
    if n == 0:
        return np.zeros(len(rows))
    mask = None if bool(attention.all()) else attention.to(device)
    hidden = model.encoder(ids.to(device), attention_mask=mask)  # the MLM head runs on the masked positions only
    picked = model.mlm_head(hidden[torch.arange(n, device=hidden.device), at.to(hidden.device)]).double()
    scores = torch.log_softmax(picked, dim=-1).gather(-1, target.to(picked.device)[:, None]).squeeze(-1).cpu()
    return np.bincount(np.asarray(owner), weights=scores.numpy(), minlength=len(rows))
