"""MaxEntLM: a hashed maximum-entropy (log-linear) N-gram language model.

    score(w | h) = bias[w] + sum over the histories f of h (the last 1 .. N-1 tokens) of theta[(hash(f) + w) mod B]
    p(w | h) = softmax over w of score(w | h)

This is the classic hashed maxent model (Mikolov's RNNME "direct connections" without the RNN): one
weight vector theta of B buckets shared by every feature, where a feature's V scores are ONE
contiguous window of theta (fastlm.ops.hashed_window_sum), so there is no (features, V) matrix.
The history hash is fixed integer arithmetic (fastlm.models.ngram_hash). The model has the GPT
contract that the trainer, `fastlm eval` and `fastlm generate` use: forward(input_ids, labels, ...)
-> logits or (logits or None, loss), `config.to_dict()`, `num_params()`, `generate(...)`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastlm import ops
from fastlm.models.gpt import document_positions
from fastlm.models.maxent_config import MaxEntConfig
from fastlm.models.ngram_hash import history_hashes
from fastlm.nn.sampling import check_sampling, sample_step

__all__ = ["MaxEntConfig", "MaxEntLM"]


class MaxEntLM(nn.Module):
    """theta (hash_buckets,) and bias (vocab_size,): the whole model."""

    # fastlm.parallel.parallelize: only data parallelism (there are no layers or heads to split).
    data_parallel_only = True

    def __init__(self, config: MaxEntConfig):
        super().__init__()
        config = config.resolved()
        self.config = config
        self.theta = nn.Parameter(torch.empty(config.hash_buckets))
        self.bias = nn.Parameter(torch.empty(config.vocab_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero weights (the uniform distribution), or N(0, init_std) when init_std > 0; zero bias."""
        if self.config.init_std > 0:
            nn.init.normal_(self.theta, 0.0, self.config.init_std)
        else:
            nn.init.zeros_(self.theta)
        nn.init.zeros_(self.bias)

    # ---- forward ------------------------------------------------------------------------------
    def feature_hashes(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, order - 1) bucket of each history of each position; -1 where it would reach before
        the row start (or, with cu_seqlens, the document start)."""
        b, t = input_ids.shape
        positions = document_positions(cu_seqlens, b * t)[0] if cu_seqlens is not None else None
        return history_hashes(input_ids, self.config.order, self.config.hash_buckets, positions)

    def logits(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, vocab): the scores of the next token after each position."""
        hashes = self.feature_hashes(input_ids, cu_seqlens)
        return ops.hashed_window_sum(self.theta, hashes, self.config.vocab_size) + self.bias

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                kv_cache=None, cu_seqlens: torch.Tensor | None = None, return_logits: bool = True,
                hidden_states: torch.Tensor | None = None):
        """logits (B, T, vocab); (logits, loss) when labels are given; (None, loss) with return_logits=False.

        labels follow GPT's (Hugging Face) convention: the same shape as input_ids, shifted here
        (position t predicts labels[t + 1]), -100 ignored, the loss (fastlm.ops.cross_entropy) averaged
        over the counted tokens; with cu_seqlens the last token of a document predicts nothing.
        kv_cache and hidden_states are GPT's (a KV cache, a pipeline stage's input): a maxent model
        has neither and rejects them.
        """
        if kv_cache is not None or hidden_states is not None:
            raise ValueError("MaxEntLM has no KV cache and no pipeline stages: kv_cache and hidden_states must be None")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq), got {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence of {input_ids.shape[1]} tokens is longer than max_seq_len "
                             f"{self.config.max_seq_len}")
        logits = self.logits(input_ids, cu_seqlens)
        if labels is None:
            return logits
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels shape {tuple(labels.shape)} != input_ids shape {tuple(input_ids.shape)}")
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)
        if cu_seqlens is not None:  # no prediction across a document boundary
            targets = targets.flatten().index_fill(0, (cu_seqlens[1:] - 1).long(), -100).view_as(targets)
        loss = ops.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        return (logits if return_logits else None), loss

    # ---- utilities ----------------------------------------------------------------------------
    def num_params(self, exclude_embeddings: bool = False) -> int:
        """theta + bias (a maxent model has no embeddings: exclude_embeddings changes nothing)."""
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample continuations (GPT.generate's contract). Returns (B, prompt + generated) token ids.

        temperature 0 is greedy. Stops after max_new_tokens, at max_seq_len, or when every row has
        produced eos_token_id (rows that finished early are padded with it). Each step scores only
        the last order - 1 tokens: the whole history the model reads.
        """
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        b, t = input_ids.shape
        if t == 0:
            raise ValueError("generate needs a prompt of at least one token")
        if t > self.config.max_seq_len:
            raise ValueError(f"prompt of {t} tokens is longer than the model's context (max_seq_len {self.config.max_seq_len})")
        check_sampling(max_new_tokens, temperature, top_k, top_p)

        total = min(self.config.max_seq_len, t + max_new_tokens)
        out = input_ids
        context = max(1, self.config.order - 1)
        finished = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        while out.shape[1] < total:
            logits = self.logits(out[:, -context:])[:, -1].float()
            nxt = sample_step(logits, finished, eos_token_id, temperature, top_k, top_p, generator)
            out = torch.cat([out, nxt[:, None]], dim=1)
            if eos_token_id is not None and bool(finished.all()):
                break
        return out
