"""The pretrained body of a task model: a GPT (decoder) or an Encoder, and what tasks need of it.

    body, tokenizer = build_backbone(task_config)  # GPT or Encoder, maybe from model.init_from
    h = hidden_states(body, ids, attention_mask)   # (B, T, d_model)
    emb = input_embedding(body)                    # the token embedding (adversarial training)

Decoder inputs are right-padded: with causal attention no real token sees the padding, so the
hidden state of the last real token is exact without a mask.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fastlm.models import GPT
from fastlm.tasks.config import TaskConfig
from fastlm.train.errors import ConfigError


def build_backbone(tc: TaskConfig) -> tuple[nn.Module, Path | None]:
    """(backbone, tokenizer.json of model.init_from or None). tc is left as it is: the architecture
    init_from brought is the backbone's `config` (record it with tc.with_model_architecture)."""
    m = tc.config.model
    if m.is_encoder:
        from fastlm.models.encoder import Encoder

        if m.init_from:
            raise ConfigError("model.init_from: not yet available for encoder task models "
                              "(train the encoder from scratch, or use a GPT run)")
        return Encoder(m.architecture(), add_pooler=True), None
    if m.init_from:
        from fastlm.train.run import init_model_from

        return init_model_from(m.init_from, encrypt=tc.config.checkpoint.encrypt)
    return GPT(m.architecture()), None


def is_encoder(body: nn.Module) -> bool:
    return not isinstance(body, GPT)


def d_model(body: nn.Module) -> int:
    return body.config.d_model


def hidden_states(body: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    if isinstance(body, GPT):
        return body.hidden_states(input_ids)
    return body(input_ids, attention_mask)


def input_embedding(model: nn.Module) -> nn.Embedding:
    """The token embedding of a task model or a bare backbone (its `tok_emb`)."""
    for module in model.modules():
        emb = getattr(module, "tok_emb", None)
        if isinstance(emb, nn.Embedding):
            return emb
    raise ValueError(f"{type(model).__name__} has no token embedding (tok_emb) to perturb")


def pad_id(body: nn.Module, fallback: int) -> int:
    pad = getattr(body.config, "pad_token_id", None)
    return fallback if pad is None else pad
