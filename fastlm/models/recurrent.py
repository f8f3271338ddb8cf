"""RecurrentLM: embedding -> LSTM / GRU / RNN layers (fastlm.nn) -> head, with the GPT model contract.

forward(input_ids, labels=None, return_logits=True) -> logits, or (logits or None, loss) with labels
(the loss through fastlm.nn.head.head_loss, so the fused linear cross-entropy applies); generate(...)
samples token by token with the carried recurrent state (one single-step op call per layer and token).

Stateful training (truncated BPTT across windows, `data.stateful = true`): with `stateful=True` the
model keeps the detached final state of its last training forward and starts the next training
forward from it when the batch size matches (each row continues the previous batch's row; the
stateful loader provides such batches). Evaluation (eval mode) is stateless: every window starts from
zeros, so validation numbers compare with the stateless runs and the GPT's. reset_state() forgets
the carried state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastlm.models.recurrent_config import RecurrentConfig
from fastlm.nn import GRU, LSTM, RNN, Linear
from fastlm.nn.head import full_logits, head_loss
from fastlm.nn.sampling import check_sampling, sample_step

__all__ = ["RecurrentLM", "RecurrentConfig"]

_LAYERS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _detach(state: State) -> State:
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def _batch(state: State) -> int:
    return (state[0] if isinstance(state, tuple) else state).shape[1]


class RecurrentLM(nn.Module):
    """Embeddings -> dropout -> recurrent stack -> dropout -> LM head (and loss)."""

    # fastlm.parallel.parallelize: only data parallelism (no Transformer layers to split or stage).
    data_parallel_only = True

    def __init__(self, config: RecurrentConfig, stateful: bool = False):
        super().__init__()
        config = config.resolved()
        self.config = config
        self.family = config.family
        self.stateful = stateful
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.rnn = _LAYERS[config.family](config.d_model, config.d_model, num_layers=config.n_layer,
                                          dropout=config.dropout if config.n_layer > 1 else 0.0, batch_first=True)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self._carried: State | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Embeddings (and an untied head) uniform(-init_range, init_range); the recurrent layers torch.nn's init."""
        r = self.config.init_range
        nn.init.uniform_(self.tok_emb.weight, -r, r)
        if not self.config.tie_embeddings:
            nn.init.uniform_(self.lm_head.weight, -r, r)
        self.rnn.reset_parameters()

    def reset_state(self) -> None:
        """Forget the state carried between stateful training forwards."""
        self._carried = None

    def hidden_states(self, input_ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """(hidden (B, T, d_model) after the output dropout, final state) from state (zeros when None)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        x = self.drop(self.tok_emb(input_ids))
        out, final = self.rnn(x, state)
        return self.drop(out), final

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None, return_logits: bool = True):
        """logits (B, T, vocab); (logits or None, loss) when labels are given (the GPT's contract:
        labels shaped like input_ids, shifted here, -100 ignored)."""
        if cu_seqlens is not None:
            raise ValueError("RecurrentLM: packed documents (cu_seqlens) are not supported; use token windows")
        carry = self.stateful and self.training
        state = self._carried if carry and self._carried is not None and _batch(self._carried) == input_ids.shape[0] \
            else None
        hidden, final = self.hidden_states(input_ids, state)
        if carry:
            self._carried = _detach(final)
        if labels is None:
            return self.lm_head(hidden)
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels shape {tuple(labels.shape)} != input_ids shape {tuple(input_ids.shape)}")
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)
        return head_loss(self.lm_head, hidden, targets, return_logits)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # a tied weight counts once
        return n - self.tok_emb.weight.numel() if exclude_embeddings else n

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample continuations token by token with the carried state. Returns (B, prompt + generated).

        GPT.generate's contract, except that a recurrent model has no context limit: it stops after
        max_new_tokens or when every row has produced eos_token_id (rows that finished are padded with it).
        """
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        b, t = input_ids.shape
        if t == 0:
            raise ValueError("generate needs a prompt of at least one token")
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        out = input_ids
        if max_new_tokens == 0:
            return out
        was_training = self.training
        self.eval()
        try:
            finished = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
            step_input, state = input_ids, None
            for _ in range(max_new_tokens):
                hidden, state = self.hidden_states(step_input, state)  # the prompt once, then one token a step
                logits = full_logits(self.lm_head, hidden[:, -1]).float()
                nxt = sample_step(logits, finished, eos_token_id, temperature, top_k, top_p, generator)
                out = torch.cat([out, nxt[:, None]], dim=1)
                if eos_token_id is not None and bool(finished.all()):
                    break
                step_input = nxt[:, None]
        finally:
            self.train(was_training)
        return out
