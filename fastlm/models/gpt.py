"""GPT: one decoder-only Transformer class for GPT-2 and LLaMA style models (see GPTConfig)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fastlm.models.config import GPTConfig
from fastlm.nn import Block, KVCache, LayerNorm, Layers, Linear, RMSNorm, rope_cos_sin
from fastlm.nn.attention import document_ids
from fastlm.nn.head import full_logits, head_loss
from fastlm.nn.init import init_weights_
from fastlm.nn.sampling import check_sampling, sample_next_token, sample_step  # noqa: F401  (sample_next_token: fastlm.models API)

__all__ = ["GPT", "GPTConfig"]


class GPT(nn.Module):
    """Embeddings -> blocks -> final norm -> LM head (and loss).

    A pipeline stage is a GPT with the parts it does not hold set to None (see
    fastlm.parallel.pipeline.split): without tok_emb the forward starts from `hidden_states`,
    without lm_head it returns the hidden states. The parts are named for that split:
    """

    pipeline_layers = "blocks"                   # the Layers container, split between stages
    pipeline_first = ("tok_emb", "pos_emb", "drop")  # the first stage's parts
    pipeline_last = ("norm", "lm_head")          # the last stage's parts

    def __init__(self, config: GPTConfig):
        super().__init__()
        config = config.resolved()
        self.config = config
        self.family = config.family
        llama = config.family == "llama"
        self.uses_rope = llama  # LLaMA rotates q/k (RoPE); GPT-2 learns absolute positions

        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = None if llama else nn.Embedding(config.max_seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.blocks = Layers(
            Block(d_model=config.d_model, n_head=config.n_head, n_kv_head=config.n_kv_head,
                  head_dim=config.head_dim, d_ff=config.d_ff, norm="rmsnorm" if llama else "layernorm",
                  norm_eps=config.norm_eps, activation=config.activation, gated_mlp=llama,
                  bias=config.bias, dropout=config.dropout, layer_idx=i)
            for i in range(config.n_layer))
        self.norm = RMSNorm(config.d_model, config.norm_eps) if llama else \
            LayerNorm(config.d_model, config.norm_eps, config.bias)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, init_std) for weights and embeddings, zero biases, unit norms, and the
        projections that write into the residual stream scaled by 1/sqrt(2 * n_layer)."""
        std = self.config.init_std
        init_weights_(self, std)
        resid_std = std / math.sqrt(2 * self.config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, 0.0, resid_std)
            nn.init.normal_(block.mlp.proj.weight, 0.0, resid_std)

    # ---- forward ------------------------------------------------------------------------------
    def hidden_states(self, input_ids: torch.Tensor, kv_cache: KVCache | None = None,
                      cu_seqlens: torch.Tensor | None = None, hidden_states: torch.Tensor | None = None,
                      prefix: torch.Tensor | None = None) -> torch.Tensor:
        """The final-norm output (B, T, d_model). With a KV cache, input_ids continue the cached positions.

        cu_seqlens: documents packed into the rows, as offsets into the flattened B*T tokens (a
        boundary at every row start too): no token attends across a document, and positions restart
        at each document, so every document is computed as if it ran alone.
        hidden_states: the previous pipeline stage's output, for a stage without the embeddings
        (input_ids still give the positions); a stage without the final norm returns its blocks' output.
        prefix: (B, P, d_model) embeddings placed before the tokens' (e.g. projected image patches,
        fastlm.models.multimodal); they take positions 0..P-1 and the output covers P + T positions.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq), got {tuple(input_ids.shape)}")
        b, t = input_ids.shape
        if prefix is not None:
            if prefix.dim() != 3 or prefix.shape[0] != b or prefix.shape[2] != self.config.d_model:
                raise ValueError(f"prefix must have shape ({b}, P, {self.config.d_model}), got {tuple(prefix.shape)}")
            if cu_seqlens is not None or self.tok_emb is None:
                raise ValueError("a prefix needs the embeddings and no packed documents (cu_seqlens)")
            t = t + prefix.shape[1]  # the positions the blocks see
        start = 0
        if kv_cache is not None:
            kv_cache.check(b, t)
            start = kv_cache.pos
        if start + t > self.config.max_seq_len:
            raise ValueError(f"sequence of {start + t} tokens is longer than max_seq_len {self.config.max_seq_len}")
        max_seqlen = None
        if cu_seqlens is not None:
            if kv_cache is not None:
                raise ValueError("cu_seqlens (packed documents) cannot be combined with a KV cache")
            positions, max_seqlen = document_positions(cu_seqlens, b * t)
        else:
            positions = torch.arange(start, start + t, device=input_ids.device)

        if self.tok_emb is not None:
            x = self.tok_emb(input_ids)
            if prefix is not None:
                x = torch.cat([prefix.to(x.dtype), x], dim=1)
            if self.pos_emb is not None:
                # One row of positions per sequence (packed documents restart them): per-sample gradients
                # (DP-SGD) need each row's own share of the position embedding's gradient.
                x = x + self.pos_emb(positions.view(-1, t).expand(b, t))
            x = self.drop(x)
        elif hidden_states is None:
            raise ValueError("this GPT holds no embeddings (a pipeline stage): pass the previous stage's "
                             "output as hidden_states")
        else:
            x = hidden_states
        rope = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta) if self.uses_rope else None
        for block in self.blocks:
            x = block(x, rope, kv_cache, cu_seqlens, max_seqlen)
        if kv_cache is not None:
            kv_cache.advance(t)
        return self.norm(x) if self.norm is not None else x

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, cu_seqlens: torch.Tensor | None = None, return_logits: bool = True,
                hidden_states: torch.Tensor | None = None, prefix: torch.Tensor | None = None):
        """logits (B, T, vocab); (logits, loss) when labels are given.

        return_logits=False (with labels; what the trainer uses): (None, loss), computed by the fused
        linear cross-entropy where the head offers it, so the (B, T, vocab) logits are never stored.

        labels follow the Hugging Face convention: the same shape as input_ids, shifted here (position
        t predicts labels[t + 1]), -100 ignored, loss averaged over the counted tokens. With
        cu_seqlens (packed documents) the last token of a document predicts nothing.
        A pipeline stage without the head returns its hidden states (B, T, d_model) instead.
        prefix: (B, P, d_model) embeddings before the tokens (see hidden_states); the outputs cover the
        P + T positions, and no loss is taken on the prefix (its last position predicts labels[:, 0]).
        """
        hidden = self.hidden_states(input_ids, kv_cache, cu_seqlens, hidden_states, prefix)
        if self.lm_head is None:
            return hidden
        if labels is None:
            return self.lm_head(hidden)
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels shape {tuple(labels.shape)} != input_ids shape {tuple(input_ids.shape)}")
        if prefix is not None and not return_logits:
            # Only the last prefix position and the tokens' predict a label: the head (a vocabulary-sized
            # GEMM) skips the other prefix positions rather than scoring them against -100.
            return head_loss(self.lm_head, hidden[:, prefix.shape[1] - 1:], F.pad(labels, (0, 1), value=-100), False)
        if prefix is not None:
            labels = F.pad(labels, (prefix.shape[1], 0), value=-100)
        # Shift by padding the labels instead of slicing the logits: no copy of the (B, T, V) tensor.
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)
        if cu_seqlens is not None:  # no prediction across a document boundary
            targets = targets.flatten().index_fill(0, (cu_seqlens[1:] - 1).long(), -100).view_as(targets)
        return head_loss(self.lm_head, hidden, targets, return_logits)

    # ---- utilities ----------------------------------------------------------------------------
    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once
        if exclude_embeddings:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
        return n

    def make_kv_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        p = self.tok_emb.weight
        return KVCache(self.config.n_layer, batch_size, self.config.n_kv_head, max_len, self.config.head_dim,
                       device=device or p.device, dtype=dtype or p.dtype)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
                 generator: torch.Generator | None = None, logits_processor=None) -> torch.Tensor:
        """Sample continuations with a KV cache. Returns (B, prompt + generated) token ids.

        temperature 0 is greedy. Stops after max_new_tokens, at max_seq_len, or when every row has
        produced eos_token_id (rows that finished early are padded with it). logits_processor:
        (tokens so far (B, T), next-token logits (B, V)) -> logits, applied before sampling (e.g. a
        watermark, fastlm.accountability.watermark).
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
        if total == t:
            return out
        was_training = self.training
        self.eval()
        try:
            cache = self.make_kv_cache(b, total, device=input_ids.device)
            finished = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
            step_input = input_ids
            while out.shape[1] < total:
                # Only the last position's logits are needed.
                h = self.hidden_states(step_input, cache)[:, -1]
                logits = full_logits(self.lm_head, h).float()
                if logits_processor is not None:
                    logits = logits_processor(out, logits)
                nxt = sample_step(logits, finished, eos_token_id, temperature, top_k, top_p, generator)
                out = torch.cat([out, nxt[:, None]], dim=1)
                if eos_token_id is not None and bool(finished.all()):
                    break
                step_input = nxt[:, None]
        finally:
            self.train(was_training)
        return out


def document_positions(cu_seqlens: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, int | None]:
    """Position of every token within its document (restarting at 0), and the longest document.

    cu_seqlens: (n + 1,) offsets of n documents covering num_tokens tokens. The longest document is
    None while torch.compile traces (its value is unknown then; the kernels find it themselves).
    """
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(f"cu_seqlens must be 1-D with at least 2 entries, got shape {tuple(cu_seqlens.shape)}")
    doc = document_ids(cu_seqlens, num_tokens)
    tokens = torch.arange(num_tokens, device=cu_seqlens.device)
    positions = tokens - cu_seqlens.to(tokens.dtype)[doc.clamp(0, cu_seqlens.shape[0] - 1)]
    if torch.compiler.is_compiling():
        return positions, None
    if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != num_tokens:
        raise ValueError(f"cu_seqlens must start at 0 and end at batch * seq = {num_tokens}, "
                         f"got {int(cu_seqlens[0])} ... {int(cu_seqlens[-1])}")
    return positions, int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
