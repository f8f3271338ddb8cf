"""Hugging Face vision towers -> fastlm VisionEncoder: ViT (ViTModel) and CLIP's (CLIPVisionModel).

    encoder = vision_from_hf(transformers.ViTModel(...))                 # or (config, state_dict)
    encoder = vision_from_hf(transformers.CLIPVisionModel(...))

A ViT's patch Conv2d (kernel = stride = patch) becomes the patch-embedding Linear (its weight viewed as
(d, C * p * p)); query, key and value are concatenated into the fused qkv. CLIP's tower has no patch bias,
a LayerNorm on the embeddings (pre_layrnorm) and its final LayerNorm on the pooled [CLS] only
(post_layernorm): VisionConfig's patch_bias, embed_norm and final_norm = "pooled".
"""
from __future__ import annotations

from typing import Mapping

import torch

from fastlm.models.vision import VisionConfig, VisionEncoder
from fastlm.nn.activations import ACTIVATIONS

VISION_MODEL_TYPES = ("vit", "clip_vision_model")


def _get(cfg, key: str, default=None):
    v = cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)
    return default if v is None else v


def vision_config_from_hf(c) -> VisionConfig:
    """VisionConfig of a ViTConfig / CLIPVisionConfig (or its config.json dict); ValueError naming a setting
    fastlm does not reproduce."""
    kind = _get(c, "model_type")
    if kind not in VISION_MODEL_TYPES:
        raise ValueError(f"unsupported vision model_type {kind!r}; supported: {', '.join(VISION_MODEL_TYPES)}")
    act = _get(c, "hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {act!r}; supported: {', '.join(sorted(ACTIVATIONS))}")
    if kind == "vit" and not _get(c, "qkv_bias", True):
        raise ValueError("unsupported vit config: qkv_bias=False")
    clip = kind == "clip_vision_model"
    return VisionConfig(
        image_size=_get(c, "image_size", 224), patch_size=_get(c, "patch_size", 32 if clip else 16),
        channels=_get(c, "num_channels", 3), d_model=_get(c, "hidden_size", 768),
        n_layer=_get(c, "num_hidden_layers", 12), n_head=_get(c, "num_attention_heads", 12),
        d_ff=_get(c, "intermediate_size", 3072), norm_eps=_get(c, "layer_norm_eps", 1e-5 if clip else 1e-12),
        activation=act, pool="cls", patch_bias=not clip, embed_norm=clip, final_norm="pooled" if clip else "all",
        family="vit")


def _block_names(kind: str) -> list[tuple[str, tuple[str, ...]]]:
    if kind == "vit5":  # transformers >= 5 names ViT's layers like this
        return [("attn.qkv", ("attention.q_proj", "attention.k_proj", "attention.v_proj")),
                ("attn.proj", ("attention.o_proj",)), ("norm1", ("layernorm_before",)),
                ("mlp.fc", ("mlp.fc1",)), ("mlp.proj", ("mlp.fc2",)), ("norm2", ("layernorm_after",))]
    if kind == "vit":  # checkpoints written by transformers 4 (and the Hub's)
        return [("attn.qkv", ("attention.attention.query", "attention.attention.key", "attention.attention.value")),
                ("attn.proj", ("attention.output.dense",)), ("norm1", ("layernorm_before",)),
                ("mlp.fc", ("intermediate.dense",)), ("mlp.proj", ("output.dense",)), ("norm2", ("layernorm_after",))]
    return [("attn.qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            ("attn.proj", ("self_attn.out_proj",)), ("norm1", ("layer_norm1",)),
            ("mlp.fc", ("mlp.fc1",)), ("mlp.proj", ("mlp.fc2",)), ("norm2", ("layer_norm2",))]


def vision_state_dict_from_hf(kind: str, config: VisionConfig, sd: Mapping[str, torch.Tensor]) -> dict:
    """fastlm VisionEncoder names -> tensors, from a ViTModel / CLIPVisionModel state dict (prefixes such as
    "vit." or "vision_model." are accepted)."""
    sd = {k.split("vit.", 1)[-1] if k.startswith("vit.") else k.split("vision_model.", 1)[-1]: v for k, v in sd.items()}
    d = config.d_model
    out: dict[str, torch.Tensor] = {}
    if kind == "vit":
        out["patch_emb.weight"] = sd["embeddings.patch_embeddings.projection.weight"].reshape(d, -1)
        out["patch_emb.bias"] = sd["embeddings.patch_embeddings.projection.bias"]
        out["cls_token"] = sd["embeddings.cls_token"]
        out["pos_emb"] = sd["embeddings.position_embeddings"]
        out["norm.weight"], out["norm.bias"] = sd["layernorm.weight"], sd["layernorm.bias"]
        if "layers.0.attention.q_proj.weight" in sd:
            kind, layer = "vit5", "layers.{}."
        else:
            layer = "encoder.layer.{}."
    else:
        out["patch_emb.weight"] = sd["embeddings.patch_embedding.weight"].reshape(d, -1)
        out["cls_token"] = sd["embeddings.class_embedding"].reshape(1, 1, d)
        out["pos_emb"] = sd["embeddings.position_embedding.weight"][None]
        out["emb_norm.weight"], out["emb_norm.bias"] = sd["pre_layrnorm.weight"], sd["pre_layrnorm.bias"]
        out["norm.weight"], out["norm.bias"] = sd["post_layernorm.weight"], sd["post_layernorm.bias"]
        layer = "encoder.layers.{}."
    for i in range(config.n_layer):
        for ours, theirs in _block_names(kind):
            prefix = layer.format(i)
            for what in ("weight", "bias"):
                parts = [sd[f"{prefix}{t}.{what}"] for t in theirs]
                out[f"blocks.{i}.{ours}.{what}"] = torch.cat(parts) if len(parts) > 1 else parts[0]
    return out


def config_and_weights(hf_model_or_config, state_dict, caller: str):
    """(HF config, state dict) of an HF model, or of a config given with its state dict."""
    if isinstance(hf_model_or_config, torch.nn.Module):
        return hf_model_or_config.config, hf_model_or_config.state_dict() if state_dict is None else state_dict
    if state_dict is None:
        raise ValueError(f"{caller}(config) needs the state_dict too (or pass the HF model itself)")
    return hf_model_or_config, state_dict


def vision_from_hf(hf_model_or_config, state_dict: Mapping[str, torch.Tensor] | None = None,
                   dtype: torch.dtype = torch.float32) -> VisionEncoder:
    """A VisionEncoder equal to a transformers ViTModel / CLIPVisionModel (or its config plus state dict)."""
    hf_config, state_dict = config_and_weights(hf_model_or_config, state_dict, "vision_from_hf")
    config = vision_config_from_hf(hf_config)
    sd = vision_state_dict_from_hf(_get(hf_config, "model_type"), config, state_dict)
    with torch.device("meta"):
        model = VisionEncoder(config)
    model.load_state_dict({k: v.detach().to(dtype=dtype, copy=True).contiguous() for k, v in sd.items()},
                          strict=True, assign=True)
    return model
