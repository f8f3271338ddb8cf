"""Decoding a prompted GPT: greedy (KV cache) and beam search.

    ids = greedy(model, prompt_ids, max_new_tokens=40, eos_id=0)
    ids = beam_search(model, prompt_ids, beam_size=4, max_new_tokens=40, eos_id=0)

Both return the new tokens only, without the end token.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def greedy(model, prompt: list[int], max_new_tokens: int, eos_id: int | None = None) -> list[int]:
    ids = torch.tensor([prompt], device=model.tok_emb.weight.device)
    out = model.generate(ids, max_new_tokens, temperature=0.0, eos_token_id=eos_id)[0, len(prompt):].tolist()
    return out[:out.index(eos_id)] if eos_id is not None and eos_id in out else out


@torch.no_grad()
def sequence_log_prob(model, prompt: list[int], continuation: list[int]) -> float:
    """log p(continuation | prompt) under the model (for tests and rescoring)."""
    ids = torch.tensor([prompt + continuation], device=model.tok_emb.weight.device)
    logp = model(ids).float().log_softmax(-1)[0]
    return float(sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(continuation)))


@torch.no_grad()
def beam_search(model, prompt: list[int], beam_size: int, max_new_tokens: int, eos_id: int | None = None,
                length_penalty: float = 1.0) -> list[int]:
    """The best hypothesis by log-probability / length ** length_penalty (0: plain log-probability).

    Hypotheses end at eos_id (counted in their length) or after max_new_tokens. Each step keeps the
    beam_size best live hypotheses; with length_penalty 0 the search stops as soon as no live beam
    can beat the best finished one.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    device = model.tok_emb.weight.device
    max_new_tokens = min(max_new_tokens, model.config.max_seq_len - len(prompt))
    beams = [([], 0.0)]  # (new tokens, summed log-probability)
    finished: list[tuple[float, list[int]]] = []

    def normalized(logp: float, length: int) -> float:
        return logp / max(length, 1) ** length_penalty

    was_training = model.training
    model.eval()
    try:
        for step in range(max_new_tokens):
            ids = torch.tensor([prompt + toks for toks, _ in beams], device=device)
            logp = model.lm_head(model.hidden_states(ids)[:, -1]).float().log_softmax(-1)
            scores = torch.tensor([s for _, s in beams], device=device)[:, None] + logp
            top = torch.topk(scores.flatten(), min(2 * beam_size, scores.numel()))
            vocab = logp.shape[-1]
            candidates = []
            for score, flat in zip(top.values.tolist(), top.indices.tolist()):
                b, tok = divmod(flat, vocab)
                toks = beams[b][0] + [tok]
                if eos_id is not None and tok == eos_id:
                    finished.append((normalized(score, len(toks)), toks[:-1]))
                else:
                    candidates.append((toks, score))
                if len(candidates) == beam_size:
                    break
            beams = candidates
            if not beams:
                break
            # Without length normalization a score only falls as a beam grows: stop once none can win.
            if length_penalty == 0 and finished and max(f[0] for f in finished) >= max(s for _, s in beams):
                break
        finished += [(normalized(s, len(t)), t) for t, s in beams]
    finally:
        model.train(was_training)
    return max(finished, key=lambda f: f[0])[1]
