"""Encoder: bidirectional Transformer encoders (BERT, RoBERTa, ALBERT) from the same fastlm.nn blocks as GPT.

    encoder = Encoder(EncoderConfig(family="bert", ...))
    hidden = encoder(input_ids, attention_mask, token_type_ids)      # (B, S, d_model)
    logits, loss = EncoderForMaskedLM(config)(input_ids, attention_mask, labels=labels)

Padding is never computed: with an attention_mask the valid tokens of every row are gathered into
one packed sequence per row (cu_seqlens) for the varlen attention kernels, and the hidden states
of pad positions come back as zeros.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastlm.models.encoder_config import EncoderConfig
from fastlm.nn import Block, LayerNorm, Layers, Linear, get_activation
from fastlm.nn.head import logits_loss
from fastlm.nn.init import init_weights_

__all__ = ["Encoder", "EncoderConfig", "EncoderForMaskedLM", "EncoderForSequenceClassification", "Pooler",
           "MaskedLMHead"]


class Pooler(nn.Module):
    """tanh(dense(hidden of the first token)): BERT's [CLS] summary of the sequence."""

    def __init__(self, d_model: int):
        super().__init__()
        self.dense = Linear(d_model, d_model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class Encoder(nn.Module):
    """The bare encoder: embeddings -> n_layer post-LayerNorm, non-causal blocks -> hidden states.

    Module names follow GPT (tok_emb, pos_emb, blocks[i].attn.qkv/proj, blocks[i].mlp.fc/proj), so
    the parallelize functions that swap GPT's modules apply here too. ALBERT's shared layers are
    the same Block objects run several times (blocks holds n_layer_groups of them).

    A pipeline stage is an Encoder with the parts it does not hold set to None: without tok_emb
    the forward starts from `hidden_states` (the previous stage's padded output), and only the
    blocks it holds run.
    """

    pipeline_layers = "blocks"
    pipeline_first = ("tok_emb", "pos_emb", "type_emb", "emb_norm", "drop", "emb_proj")
    pipeline_last = ("pooler",)

    def __init__(self, config: EncoderConfig, add_pooler: bool = False):
        super().__init__()
        c = config.resolved()
        self.config = c
        self.family = c.family
        e, h = c.embedding_size, c.d_model
        self.tok_emb = nn.Embedding(c.vocab_size, e, padding_idx=c.pad_token_id)
        self.pos_emb = nn.Embedding(c.max_seq_len + c.position_offset, e,
                                    padding_idx=c.pad_token_id if c.family == "roberta" else None)
        self.type_emb = nn.Embedding(c.type_vocab_size, e)
        self.emb_norm = LayerNorm(e, c.norm_eps)
        self.drop = nn.Dropout(c.dropout) if c.dropout > 0 else nn.Identity()
        # ALBERT projects its small embedding up to the hidden size (it keeps the projection even when E == H).
        self.emb_proj = Linear(e, h) if c.family == "albert" else None
        self.blocks = Layers(
            Block(d_model=h, n_head=c.n_head, n_kv_head=c.n_head, head_dim=c.head_dim, d_ff=c.d_ff,
                  norm="layernorm", norm_eps=c.norm_eps, activation=c.activation, bias=True, dropout=c.dropout,
                  layer_idx=i, post_norm=True, causal=False)
            for i in range(c.n_layer_groups))
        # Layer i runs block layer_block[i] (HF ALBERT's grouping: int(i / (n_layer / n_groups))).
        self.layer_block = [int(i / (c.n_layer / c.n_layer_groups)) for i in range(c.n_layer)]
        self.pooler = Pooler(h) if add_pooler else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT init: N(0, init_std) weights and embeddings (pad rows zero), zero biases, unit norms."""
        init_weights_(self, self.config.init_std)

    # ---- forward ------------------------------------------------------------------------------
    def _positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.family == "roberta":  # HF RoBERTa: count non-pad tokens, pads sit at pad_token_id
            real = (input_ids != c.pad_token_id).long()
            return torch.cumsum(real, dim=1) * real + c.pad_token_id
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)

    def _check(self, input_ids, attention_mask, token_type_ids) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a (batch, seq) tensor, got {got}")
        if input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence of {input_ids.shape[1]} tokens is longer than max_seq_len "
                             f"{self.config.max_seq_len}")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and tuple(t.shape) != tuple(input_ids.shape):
                raise ValueError(f"{name} shape {tuple(t.shape)} != input_ids shape {tuple(input_ids.shape)}")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states (B, S, d_model); zeros where attention_mask is 0.

        attention_mask: (B, S), 1 for real tokens and 0 for padding (any pattern: the real tokens of a
        row form one sequence). token_type_ids: (B, S) segment ids (default 0). hidden_states: the
        previous pipeline stage's output (B, S, d_model), for a stage without the embeddings.
        """
        self._check(input_ids, attention_mask, token_type_ids)
        b, s = input_ids.shape
        if self.tok_emb is None and hidden_states is None:
            raise ValueError("this encoder holds no embeddings (a pipeline stage): pass the previous stage's "
                             "output as hidden_states")
        positions = self._positions(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if attention_mask is None or bool(attention_mask.all()):
            return self._run(input_ids, positions, token_type_ids, hidden_states, None, None)
        # Unpad: the real tokens of all rows as one (1, total) batch of packed sequences.
        keep = attention_mask.reshape(-1).bool()
        index = keep.nonzero().squeeze(1)
        lengths = attention_mask.bool().sum(dim=1)
        cu_seqlens = F.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32)
        packed = [t.reshape(-1)[index][None] for t in (input_ids, positions, token_type_ids)]
        if hidden_states is not None:
            hidden_states = hidden_states.reshape(b * s, -1)[index][None]
        h = self._run(*packed, hidden_states, cu_seqlens, int(lengths.max()))[0]
        out = h.new_zeros(b * s, h.shape[-1]).index_copy(0, index, h)
        return out.view(b, s, -1)

    def _run(self, input_ids, positions, token_type_ids, hidden_states, cu_seqlens, max_seqlen) -> torch.Tensor:
        if self.tok_emb is not None:
            x = self.tok_emb(input_ids) + self.pos_emb(positions) + self.type_emb(token_type_ids)
            x = self.drop(self.emb_norm(x))
            if self.emb_proj is not None:
                x = self.emb_proj(x)
        else:
            x = hidden_states
        for i in self.layer_block:
            if i in self.blocks:  # a pipeline stage runs the layers it holds
                x = self.blocks[str(i)](x, None, None, cu_seqlens, max_seqlen)
        return x

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.pooler is None:
            raise ValueError("this encoder has no pooler (build it with add_pooler=True)")
        return self.pooler(hidden)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.tok_emb.weight.numel() + self.pos_emb.weight.numel() + self.type_emb.weight.numel()
        return n


class MaskedLMHead(nn.Module):
    """dense (d_model -> E) -> activation -> LayerNorm -> decoder (E -> vocab, + bias).

    The decoder weight is the token embedding when tie_embeddings (BERT, RoBERTa, ALBERT all tie).
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        c = config.resolved()
        self.dense = Linear(c.d_model, c.embedding_size)
        # RoBERTa's head always uses the exact GELU; BERT and ALBERT use hidden_act.
        self.act = get_activation("gelu" if c.family == "roberta" else c.activation)
        self.norm = LayerNorm(c.embedding_size, c.norm_eps)
        self.decoder = Linear(c.embedding_size, c.vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(hidden))))


class EncoderForMaskedLM(nn.Module):
    """Encoder + MLM head (+ with sentence_order, a pooler and a 2-way head: ALBERT's sentence-order
    prediction, or BERT's next-sentence prediction, which has the same shape).

    A pipeline stage without the heads returns the encoder's hidden states."""

    pipeline_layers = "encoder.blocks"
    pipeline_first = tuple(f"encoder.{name}" for name in Encoder.pipeline_first)
    pipeline_last = ("encoder.pooler", "mlm_head", "sop_head")

    def __init__(self, config: EncoderConfig, sentence_order: bool = False):
        super().__init__()
        self.encoder = Encoder(config, add_pooler=sentence_order)
        self.config = self.encoder.config
        self.family = self.config.family
        self.mlm_head = MaskedLMHead(self.config)
        self.sentence_order = sentence_order
        self.sop_head = Linear(self.config.d_model, 2) if sentence_order else None
        std = self.config.init_std
        for m in (self.mlm_head.dense, self.mlm_head.decoder, self.sop_head):
            if m is not None:
                nn.init.normal_(m.weight, 0.0, std)
                nn.init.zeros_(m.bias)
        if self.config.tie_embeddings:
            self.mlm_head.decoder.weight = self.encoder.tok_emb.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                sentence_order_labels: torch.Tensor | None = None, hidden_states: torch.Tensor | None = None):
        """logits (B, S, vocab); (logits, loss) when labels are given: the mean cross-entropy over the
        tokens whose label is not -100, plus the sentence-order loss when sentence_order_labels (B,) are given."""
        hidden = self.encoder(input_ids, attention_mask, token_type_ids, hidden_states)
        if self.mlm_head is None:  # a pipeline stage before the last
            return hidden
        logits = self.mlm_head(hidden)
        if labels is None:
            return logits
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels shape {tuple(labels.shape)} != input_ids shape {tuple(input_ids.shape)}")
        loss = logits_loss(self.mlm_head.decoder, logits, labels)
        if sentence_order_labels is not None:
            if self.sop_head is None:
                raise ValueError("sentence_order_labels given, but the model has no sentence-order head "
                                 "(build it with sentence_order=True)")
            sop_logits = self.sop_head(self.encoder.pooled(hidden))
            loss = loss + F.cross_entropy(sop_logits.float(), sentence_order_labels.reshape(-1))
        return logits, loss

    def sentence_order_logits(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)
        return self.sop_head(self.encoder.pooled(hidden))

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # a tied decoder weight counts once
        if exclude_embeddings:
            e = self.encoder
            n -= e.tok_emb.weight.numel() + e.pos_emb.weight.numel() + e.type_emb.weight.numel()
        return n


class EncoderForSequenceClassification(nn.Module):
    """Encoder + pooler + dropout + linear classifier (BERT's sequence classification)."""

    def __init__(self, config: EncoderConfig, num_labels: int = 2):
        super().__init__()
        self.encoder = Encoder(config, add_pooler=True)
        self.config = self.encoder.config
        self.drop = nn.Dropout(self.config.dropout) if self.config.dropout > 0 else nn.Identity()
        self.classifier = Linear(self.config.d_model, num_labels)
        nn.init.normal_(self.classifier.weight, 0.0, self.config.init_std)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)
        logits = self.classifier(self.drop(self.encoder.pooled(hidden)))
        if labels is None:
            return logits
        return logits, F.cross_entropy(logits.float(), labels.reshape(-1))
