"""Next-token sampling shared by every model that generates (GPT, maxent, recurrent, n-gram, HMM):
temperature (0 = greedy), top-k and top-p (nucleus), one check of those settings, and the batched
step that keeps finished rows at eos."""
from __future__ import annotations

import torch


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None = None,
                   top_p: float | None = None) -> None:
    """ValueError naming the first bad setting."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) (or log-probabilities) -> token ids (B,). temperature 0 is argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass (the top one stays).
        drop = probs.cumsum(dim=-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sample_step(logits: torch.Tensor, finished: torch.Tensor, eos_token_id: int | None, temperature: float,
                top_k: int | None, top_p: float | None, generator: torch.Generator | None) -> torch.Tensor:
    """The next token of each row (B,): a row that has produced eos_token_id keeps producing it
    (finished, a (B,) bool tensor, is updated in place)."""
    nxt = sample_next_token(logits, temperature, top_k, top_p, generator)
    if eos_token_id is not None:
        nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
        finished |= nxt == eos_token_id
    return nxt
