"""Hugging Face interop: GPT2LMHeadModel / LlamaForCausalLM <-> fastlm GPT (encoders: hf_encoder.py).

Weights are read from safetensors only (never pickle). Reading a checkpoint directory needs no
transformers install; `to_hf` (and `from_hf` on a model instance) naturally does.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from fastlm.models.config import GPTConfig
from fastlm.models.gpt import GPT
from fastlm.models.hf_encoder import ENCODER_MODEL_TYPES, encoder_from_hf, encoder_to_hf, load_encoder_checkpoint
from fastlm.nn.activations import ACTIVATIONS

__all__ = ["config_from_hf", "config_to_hf", "from_hf", "to_hf", "load_hf_checkpoint", "is_hf_checkpoint",
           "state_dict_from_hf", "state_dict_to_hf"]

SUPPORTED = ("gpt2", "llama")
# Buffers older checkpoints carry that hold no weights (causal masks, RoPE frequencies).
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


def _get(cfg, key: str, default=None):
    """Read a field from an HF config object or a config.json dict."""
    if isinstance(cfg, Mapping):
        v = cfg.get(key, default)
    else:
        v = getattr(cfg, key, default)
    return default if v is None else v


# ---- config -----------------------------------------------------------------------------------
def config_from_hf(hf_config) -> GPTConfig:
    """GPTConfig from a GPT2Config / LlamaConfig (or the dict of their config.json).

    Raises ValueError for configs fastlm does not reproduce exactly (e.g. RoPE scaling)."""
    model_type = _get(hf_config, "model_type")
    if model_type == "gpt2":
        return _gpt2_config_from_hf(hf_config)
    if model_type == "llama":
        return _llama_config_from_hf(hf_config)
    raise ValueError(f"unsupported Hugging Face model_type {model_type!r}; supported: "
                     f"{', '.join(SUPPORTED + ENCODER_MODEL_TYPES)}")


def _check_activation(name, key):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported {key} {name!r}; supported: {', '.join(sorted(ACTIVATIONS))}")
    return name


def _gpt2_config_from_hf(c) -> GPTConfig:
    if not _get(c, "scale_attn_weights", True):
        raise ValueError("unsupported GPT-2 config: scale_attn_weights=False")
    if _get(c, "scale_attn_by_inverse_layer_idx", False):
        raise ValueError("unsupported GPT-2 config: scale_attn_by_inverse_layer_idx=True")
    if _get(c, "add_cross_attention", False):
        raise ValueError("unsupported GPT-2 config: add_cross_attention=True")
    d_model = _get(c, "n_embd", 768)
    cfg = GPTConfig(
        family="gpt2",
        vocab_size=_get(c, "vocab_size", 50257),
        n_layer=_get(c, "n_layer", 12),
        n_head=_get(c, "n_head", 12),
        d_model=d_model,
        d_ff=_get(c, "n_inner", 4 * d_model),
        max_seq_len=_get(c, "n_positions", 1024),
        norm_eps=float(_get(c, "layer_norm_epsilon", 1e-5)),
        activation=_check_activation(_get(c, "activation_function", "gelu_new"), "activation_function"),
        bias=True,
        tie_embeddings=bool(_get(c, "tie_word_embeddings", True)),
        dropout=float(_get(c, "resid_pdrop", 0.1)),  # HF has three rates; resid_pdrop stands for all
        init_std=float(_get(c, "initializer_range", 0.02)),
    )
    cfg.validate()
    return cfg


def _llama_rope_theta(c) -> float:
    # transformers >= 5 keeps RoPE settings in rope_parameters; older configs use rope_theta + rope_scaling.
    params = dict(_get(c, "rope_parameters", None) or {})
    scaling = dict(_get(c, "rope_scaling", None) or {})
    rope_type = params.get("rope_type") or params.get("type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ValueError(f"unsupported RoPE scaling type {rope_type!r}: only the default RoPE is supported")
    return float(params.get("rope_theta") or _get(c, "rope_theta", 10000.0))


def _llama_config_from_hf(c) -> GPTConfig:
    attn_bias, mlp_bias = bool(_get(c, "attention_bias", False)), bool(_get(c, "mlp_bias", False))
    if attn_bias != mlp_bias:
        raise ValueError(f"unsupported LLaMA config: attention_bias={attn_bias} but mlp_bias={mlp_bias} "
                         "(fastlm uses one bias setting for both)")
    n_head = _get(c, "num_attention_heads", 32)
    d_model = _get(c, "hidden_size", 4096)
    cfg = GPTConfig(
        family="llama",
        vocab_size=_get(c, "vocab_size", 32000),
        n_layer=_get(c, "num_hidden_layers", 32),
        n_head=n_head,
        n_kv_head=_get(c, "num_key_value_heads", n_head),
        d_model=d_model,
        d_ff=_get(c, "intermediate_size", 11008),
        head_dim=_get(c, "head_dim", d_model // n_head),
        max_seq_len=_get(c, "max_position_embeddings", 2048),
        norm_eps=float(_get(c, "rms_norm_eps", 1e-6)),
        rope_theta=_llama_rope_theta(c),
        activation=_check_activation(_get(c, "hidden_act", "silu"), "hidden_act"),
        bias=attn_bias,
        tie_embeddings=bool(_get(c, "tie_word_embeddings", False)),
        dropout=float(_get(c, "attention_dropout", 0.0)),
        init_std=float(_get(c, "initializer_range", 0.02)),
    )
    cfg.validate()
    return cfg


def config_to_hf(config: GPTConfig):
    """The transformers config (GPT2Config / LlamaConfig) of the same architecture."""
    import transformers

    c = config.resolved()
    if c.family == "gpt2":
        problems = []
        if c.n_kv_head != c.n_head:
            problems.append("grouped-query attention (n_kv_head != n_head)")
        if c.head_dim * c.n_head != c.d_model:
            problems.append("head_dim * n_head != d_model")
        if not c.bias:
            problems.append("bias=false")
        if problems:
            raise ValueError(f"GPT-2 in Hugging Face cannot express: {', '.join(problems)}")
        return transformers.GPT2Config(
            vocab_size=c.vocab_size, n_positions=c.max_seq_len, n_embd=c.d_model, n_layer=c.n_layer,
            n_head=c.n_head, n_inner=c.d_ff, activation_function=c.activation, resid_pdrop=c.dropout,
            embd_pdrop=c.dropout, attn_pdrop=c.dropout, layer_norm_epsilon=c.norm_eps,
            initializer_range=c.init_std, tie_word_embeddings=c.tie_embeddings,
            bos_token_id=None, eos_token_id=None)
    kwargs = dict(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head, head_dim=c.head_dim,
        hidden_act=c.activation, max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps,
        initializer_range=c.init_std, tie_word_embeddings=c.tie_embeddings, attention_bias=c.bias,
        mlp_bias=c.bias, attention_dropout=c.dropout, bos_token_id=None, eos_token_id=None)
    hf_config = transformers.LlamaConfig(**kwargs)
    if hasattr(hf_config, "rope_parameters"):  # transformers >= 5
        hf_config.rope_parameters = {"rope_type": "default", "rope_theta": c.rope_theta}
    else:
        hf_config.rope_theta = c.rope_theta
    return hf_config


# ---- state dicts ------------------------------------------------------------------------------
def state_dict_from_hf(config: GPTConfig, hf_state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map HF tensors (keys with or without the "transformer."/"model." prefix) to fastlm keys.

    Raises ValueError listing missing or unexpected weights."""
    c = config.resolved()
    prefix = "transformer." if c.family == "gpt2" else "model."
    sd = {}
    for k, v in hf_state_dict.items():
        if k.endswith(_IGNORED_SUFFIXES):
            continue
        sd[k[len(prefix):] if k.startswith(prefix) else k] = v
    if c.tie_embeddings:
        sd.pop("lm_head.weight", None)  # tied: the embedding is the head (some checkpoints store both)

    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []

    def take(key):
        if key not in sd:
            missing.append(key)
            return None
        return sd.pop(key)

    def put(dst, *keys, transpose=False):
        ts = [take(k) for k in keys]
        if any(t is None for t in ts):
            return
        ts = [t.t() if transpose else t for t in ts]
        out[dst] = ts[0] if len(ts) == 1 else torch.cat(ts, dim=0)

    if c.family == "gpt2":
        put("tok_emb.weight", "wte.weight")
        put("pos_emb.weight", "wpe.weight")
        for i in range(c.n_layer):
            h, b = f"h.{i}.", f"blocks.{i}."
            for src, dst, t in (("ln_1", "norm1", False), ("attn.c_attn", "attn.qkv", True),
                                ("attn.c_proj", "attn.proj", True), ("ln_2", "norm2", False),
                                ("mlp.c_fc", "mlp.fc", True), ("mlp.c_proj", "mlp.proj", True)):
                put(b + dst + ".weight", h + src + ".weight", transpose=t)  # Conv1D stores (in, out)
                put(b + dst + ".bias", h + src + ".bias")
        put("norm.weight", "ln_f.weight")
        put("norm.bias", "ln_f.bias")
    else:
        put("tok_emb.weight", "embed_tokens.weight")
        for i in range(c.n_layer):
            h, b = f"layers.{i}.", f"blocks.{i}."
            put(b + "norm1.weight", h + "input_layernorm.weight")
            put(b + "norm2.weight", h + "post_attention_layernorm.weight")
            suffixes = (".weight", ".bias") if c.bias else (".weight",)
            for s in suffixes:
                put(b + "attn.qkv" + s, *(h + f"self_attn.{p}_proj" + s for p in "qkv"))
                put(b + "attn.proj" + s, h + "self_attn.o_proj" + s)
                put(b + "mlp.fc" + s, h + "mlp.gate_proj" + s, h + "mlp.up_proj" + s)
                put(b + "mlp.proj" + s, h + "mlp.down_proj" + s)
        put("norm.weight", "norm.weight")
    if c.tie_embeddings:
        if "tok_emb.weight" in out:
            out["lm_head.weight"] = out["tok_emb.weight"]
    else:
        put("lm_head.weight", "lm_head.weight")
    if missing or sd:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weight(s): {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
        if sd:
            extra = sorted(sd)
            parts.append(f"unexpected {len(extra)} weight(s): {', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''}")
        raise ValueError(f"checkpoint does not match a {c.family} model of this config: {'; '.join(parts)}")
    return out


def state_dict_to_hf(config: GPTConfig, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fastlm tensors (parameters, or e.g. their gradients) -> HF keys, with the model prefix."""
    c = config.resolved()
    sd = state_dict
    out: dict[str, torch.Tensor] = {}
    if c.family == "gpt2":
        p = "transformer."
        out[p + "wte.weight"] = sd["tok_emb.weight"]
        out[p + "wpe.weight"] = sd["pos_emb.weight"]
        for i in range(c.n_layer):
            h, b = f"{p}h.{i}.", f"blocks.{i}."
            for src, dst, t in (("ln_1", "norm1", False), ("attn.c_attn", "attn.qkv", True),
                                ("attn.c_proj", "attn.proj", True), ("ln_2", "norm2", False),
                                ("mlp.c_fc", "mlp.fc", True), ("mlp.c_proj", "mlp.proj", True)):
                w = sd[b + dst + ".weight"]
                out[h + src + ".weight"] = w.t().contiguous() if t else w
                out[h + src + ".bias"] = sd[b + dst + ".bias"]
        out[p + "ln_f.weight"] = sd["norm.weight"]
        out[p + "ln_f.bias"] = sd["norm.bias"]
    else:
        p = "model."
        out[p + "embed_tokens.weight"] = sd["tok_emb.weight"]
        q_dim, kv_dim = c.n_head * c.head_dim, c.n_kv_head * c.head_dim
        for i in range(c.n_layer):
            h, b = f"{p}layers.{i}.", f"blocks.{i}."
            out[h + "input_layernorm.weight"] = sd[b + "norm1.weight"]
            out[h + "post_attention_layernorm.weight"] = sd[b + "norm2.weight"]
            for s in ((".weight", ".bias") if c.bias else (".weight",)):
                q, k, v = sd[b + "attn.qkv" + s].split([q_dim, kv_dim, kv_dim], dim=0)
                out[h + "self_attn.q_proj" + s], out[h + "self_attn.k_proj" + s], out[h + "self_attn.v_proj" + s] = q, k, v
                out[h + "self_attn.o_proj" + s] = sd[b + "attn.proj" + s]
                gate, up = sd[b + "mlp.fc" + s].chunk(2, dim=0)
                out[h + "mlp.gate_proj" + s], out[h + "mlp.up_proj" + s] = gate, up
                out[h + "mlp.down_proj" + s] = sd[b + "mlp.proj" + s]
        out[p + "norm.weight"] = sd["norm.weight"]
    out["lm_head.weight"] = sd["tok_emb.weight"] if c.tie_embeddings else sd["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


# ---- models -----------------------------------------------------------------------------------
def from_hf(hf_model_or_config, state_dict: Mapping[str, torch.Tensor] | None = None,
            dtype: torch.dtype = torch.float32) -> GPT:
    """A fastlm GPT equal to a GPT2LMHeadModel / LlamaForCausalLM instance, or to an HF config
    (object or config.json dict) plus its state dict, or to a checkpoint directory. Parameters are
    cast to `dtype`. BERT / RoBERTa / ALBERT give a fastlm Encoder (see hf_encoder.py)."""
    if isinstance(hf_model_or_config, (str, Path)):
        return load_hf_checkpoint(hf_model_or_config, dtype=dtype)
    if isinstance(hf_model_or_config, torch.nn.Module):
        hf_config = hf_model_or_config.config
        if state_dict is None:
            state_dict = hf_model_or_config.state_dict()
    else:
        hf_config = hf_model_or_config
        if state_dict is None:
            raise ValueError("from_hf(config) needs the state_dict too (or pass the HF model itself)")
    if _get(hf_config, "model_type") in ENCODER_MODEL_TYPES:
        return encoder_from_hf(hf_config, state_dict, dtype=dtype, copy=isinstance(hf_model_or_config, torch.nn.Module))
    config = config_from_hf(hf_config)
    sd = state_dict_from_hf(config, state_dict)
    # Build on the meta device and adopt the checkpoint tensors: no throwaway random init.
    with torch.device("meta"):
        model = GPT(config)
    # Copy when reading from a live model, so the two never share storage; always contiguous.
    copy = isinstance(hf_model_or_config, torch.nn.Module)
    sd = {k: v.detach().to(dtype=dtype, copy=copy).contiguous() for k, v in sd.items()}
    if config.tie_embeddings:
        sd["lm_head.weight"] = sd["tok_emb.weight"]
    model.load_state_dict(sd, strict=True, assign=True)
    if model.config.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight  # assign=True replaced the shared Parameter
    return model


def to_hf(model: GPT, attn_implementation: str = "sdpa"):
    """The equivalent transformers model (GPT2LMHeadModel or LlamaForCausalLM), same dtype and device."""
    import transformers

    if not isinstance(model, GPT):
        return encoder_to_hf(model, attn_implementation)
    hf_config = config_to_hf(model.config)
    hf_config._attn_implementation = attn_implementation
    cls = transformers.GPT2LMHeadModel if model.family == "gpt2" else transformers.LlamaForCausalLM
    p = model.tok_emb.weight
    hf = cls(hf_config).to(device=p.device, dtype=p.dtype)
    sd = state_dict_to_hf(model.config, {k: v.detach() for k, v in model.state_dict().items()})
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith(_IGNORED_SUFFIXES)]
    if missing or unexpected:
        raise RuntimeError(f"to_hf: weights did not line up (missing {missing}, unexpected {unexpected})")
    if model.config.tie_embeddings:
        hf.tie_weights()
    hf.train(model.training)
    return hf


# ---- checkpoints ------------------------------------------------------------------------------
def _weights_files(d: Path) -> list[Path] | None:
    single = d / "model.safetensors"
    if single.is_file():
        return [single]
    index = d / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [d / f for f in sorted(set(weight_map.values()))]
    return None


def is_hf_checkpoint(directory) -> bool:
    """True when `directory` holds an HF config.json (with a model_type) and safetensors weights."""
    d = Path(directory)
    try:
        cfg = json.loads((d / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "model_type" in cfg and (
        (d / "model.safetensors").is_file() or (d / "model.safetensors.index.json").is_file())


def load_hf_checkpoint(directory, dtype: torch.dtype = torch.float32) -> GPT:
    """Load a saved GPT2LMHeadModel / LlamaForCausalLM (config.json + model.safetensors or a sharded
    model.safetensors.index.json) as a fastlm GPT. Needs no transformers install."""
    from safetensors.torch import load_file

    d = Path(directory)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{d}: no config.json (not a Hugging Face checkpoint directory)")
    try:
        hf_config: dict[str, Any] = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise ValueError(f"{cfg_path}: invalid JSON ({e})") from None
    if not isinstance(hf_config, dict) or "model_type" not in hf_config:
        raise ValueError(f"{cfg_path}: no model_type (not a transformers config.json)")
    if hf_config["model_type"] not in SUPPORTED + ENCODER_MODEL_TYPES:
        raise ValueError(f"{cfg_path}: unsupported model_type {hf_config['model_type']!r}; supported: "
                         f"{', '.join(SUPPORTED + ENCODER_MODEL_TYPES)}")
    if hf_config["model_type"] in ENCODER_MODEL_TYPES:  # also reads pytorch_model.bin (weights only)
        return load_encoder_checkpoint(d, hf_config, dtype=dtype)
    files = _weights_files(d)
    if files is None:
        if any(d.glob("*.bin")) or any(d.glob("*.pt")):
            raise ValueError(f"{d}: only safetensors weights are loaded (pickle .bin/.pt files are not); "
                             "re-save with save_pretrained(safe_serialization=True)")
        raise FileNotFoundError(f"{d}: no model.safetensors or model.safetensors.index.json")
    state_dict: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: shard listed in model.safetensors.index.json is missing")
        state_dict.update(load_file(str(f)))
    return from_hf(hf_config, state_dict, dtype=dtype)
