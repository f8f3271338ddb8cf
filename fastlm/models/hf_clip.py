"""A whole transformers CLIPModel -> fastlm ContrastiveImageText (vision tower, text tower, projections, scale).

    clip = clip_from_hf(transformers.CLIPModel(...))       # or clip_from_hf(config, state_dict)
    logits = clip.similarity(pixels, input_ids, attention_mask)   # = CLIPModel(...).logits_per_image

The vision tower goes through fastlm.models.hf_vision. CLIP's text tower is a pre-norm causal Transformer
with learned positions and a final LayerNorm, which is fastlm's GPT of the gpt2 family (no lm_head; CLIP's
activation, usually quick_gelu); its vector is the state of the EOS token, which CLIP's tokenizer puts last,
so fastlm pools the last real token (attention_mask). visual_projection / text_projection become
image_proj / text_proj, and logit_scale is copied (fastlm clamps it at log 100 as CLIP's training does).
"""
from __future__ import annotations

from typing import Mapping

import torch

from fastlm.models.config import GPTConfig
from fastlm.models.gpt import GPT
from fastlm.models.hf_vision import _block_names, _get, config_and_weights, vision_from_hf
from fastlm.models.multimodal import ContrastiveImageText


def text_config_from_hf(c) -> GPTConfig:
    """GPTConfig of a CLIPTextConfig (or its dict)."""
    return GPTConfig(family="gpt2", vocab_size=_get(c, "vocab_size", 49408), n_layer=_get(c, "num_hidden_layers", 12),
                     n_head=_get(c, "num_attention_heads", 8), d_model=_get(c, "hidden_size", 512),
                     d_ff=_get(c, "intermediate_size", 2048), max_seq_len=_get(c, "max_position_embeddings", 77),
                     norm_eps=_get(c, "layer_norm_eps", 1e-5), activation=_get(c, "hidden_act", "quick_gelu"),
                     bias=True, tie_embeddings=False)


def text_state_dict_from_hf(config: GPTConfig, sd: Mapping[str, torch.Tensor]) -> dict:
    """fastlm GPT names (no lm_head) -> tensors, from a CLIPModel's "text_model." tensors."""
    sd = {k[len("text_model."):]: v for k, v in sd.items() if k.startswith("text_model.")}
    out = {"tok_emb.weight": sd["embeddings.token_embedding.weight"],
           "pos_emb.weight": sd["embeddings.position_embedding.weight"],
           "norm.weight": sd["final_layer_norm.weight"], "norm.bias": sd["final_layer_norm.bias"]}
    for i in range(config.n_layer):
        for ours, theirs in _block_names("clip"):
            for what in ("weight", "bias"):
                parts = [sd[f"encoder.layers.{i}.{t}.{what}"] for t in theirs]
                out[f"blocks.{i}.{ours}.{what}"] = torch.cat(parts) if len(parts) > 1 else parts[0]
    return out


def clip_from_hf(hf_model_or_config, state_dict: Mapping[str, torch.Tensor] | None = None,
                 dtype: torch.dtype = torch.float32) -> ContrastiveImageText:
    """A ContrastiveImageText equal to a transformers CLIPModel (or its config plus state dict)."""
    config, state_dict = config_and_weights(hf_model_or_config, state_dict, "clip_from_hf")
    if _get(config, "model_type") != "clip":
        raise ValueError(f"clip_from_hf: expected a CLIPModel (model_type 'clip'), got {_get(config, 'model_type')!r}")
    vision_config = _get(config, "vision_config")
    vision_sd = {k[len("vision_model."):]: v for k, v in state_dict.items() if k.startswith("vision_model.")}
    vision = vision_from_hf(vision_config, vision_sd, dtype)
    text_config = text_config_from_hf(_get(config, "text_config"))
    text = GPT(text_config)
    text.lm_head = None  # a text tower: its hidden states are the output
    text.load_state_dict({k: v.detach().to(dtype) for k, v in text_state_dict_from_hf(text_config, state_dict).items()},
                         strict=True)
    model = ContrastiveImageText(vision.config, text.to(dtype), embed_dim=_get(config, "projection_dim", 512))
    model.vision = vision
    with torch.no_grad():
        model.image_proj.weight.copy_(state_dict["visual_projection.weight"])
        model.text_proj.weight.copy_(state_dict["text_projection.weight"])
        model.logit_scale.copy_(state_dict["logit_scale"].reshape(()))
    return model.to(dtype)
