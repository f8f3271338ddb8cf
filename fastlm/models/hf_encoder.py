"""Hugging Face interop for encoders: BERT / RoBERTa / ALBERT <-> fastlm Encoder.

    encoder_from_hf(BertModel or its config + state dict)        -> Encoder (+ pooler if it has one)
    encoder_from_hf(BertForMaskedLM / BertForPreTraining / ...)   -> EncoderForMaskedLM
    encoder_to_hf(model)                                          -> the matching transformers model
    load_encoder_checkpoint(DIR)                                  -> config.json + model.safetensors
                                                                     (or pytorch_model.bin, weights only)

Reached through fastlm.models.from_hf / to_hf / load_hf_checkpoint, which dispatch on model_type.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from fastlm.models.encoder import Encoder, EncoderForMaskedLM
from fastlm.models.encoder_config import EncoderConfig
from fastlm.nn.activations import ACTIVATIONS

ENCODER_MODEL_TYPES = ("bert", "roberta", "albert")
# Buffers some checkpoints carry that hold no weights.
_IGNORED_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")


def _get(cfg, key: str, default=None):
    v = cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)
    return default if v is None else v


# ---- config -----------------------------------------------------------------------------------
def encoder_config_from_hf(c) -> EncoderConfig:
    """EncoderConfig from a BertConfig / RobertaConfig / AlbertConfig (or their config.json dict).

    Raises ValueError naming the key of a setting fastlm does not reproduce exactly."""
    family = _get(c, "model_type")
    if family not in ENCODER_MODEL_TYPES:
        raise ValueError(f"unsupported encoder model_type {family!r}; supported: {', '.join(ENCODER_MODEL_TYPES)}")
    pos_type = _get(c, "position_embedding_type", "absolute")
    if pos_type != "absolute":
        raise ValueError(f"unsupported {family} config: position_embedding_type={pos_type!r} (only 'absolute')")
    for key in ("is_decoder", "add_cross_attention"):
        if _get(c, key, False):
            raise ValueError(f"unsupported {family} config: {key}=True (fastlm encoders are bidirectional)")
    if family == "albert" and _get(c, "inner_group_num", 1) != 1:
        raise ValueError(f"unsupported albert config: inner_group_num={_get(c, 'inner_group_num')} (only 1)")
    act = _get(c, "hidden_act", "gelu_new" if family == "albert" else "gelu")
    if act not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {act!r}; supported: {', '.join(sorted(ACTIVATIONS))}")
    pad = _get(c, "pad_token_id", 1 if family == "roberta" else 0)
    offset = pad + 1 if family == "roberta" else 0
    hidden = _get(c, "hidden_size", 4096 if family == "albert" else 768)
    n_layer = _get(c, "num_hidden_layers", 12)
    cfg = EncoderConfig(
        family=family,
        vocab_size=_get(c, "vocab_size", 30000 if family == "albert" else 30522),
        n_layer=n_layer,
        n_head=_get(c, "num_attention_heads", 64 if family == "albert" else 12),
        d_model=hidden,
        d_ff=_get(c, "intermediate_size", 4 * hidden),
        max_seq_len=_get(c, "max_position_embeddings", 512) - offset,
        embedding_size=_get(c, "embedding_size", 128) if family == "albert" else hidden,
        type_vocab_size=_get(c, "type_vocab_size", 1 if family == "roberta" else 2),
        pad_token_id=pad,
        n_layer_groups=_get(c, "num_hidden_groups", 1) if family == "albert" else n_layer,
        norm_eps=float(_get(c, "layer_norm_eps", 1e-5 if family == "roberta" else 1e-12)),
        activation=act,
        dropout=float(_get(c, "hidden_dropout_prob", 0.1)),  # HF's two rates; hidden_dropout_prob stands for both
        init_std=float(_get(c, "initializer_range", 0.02)),
        tie_embeddings=bool(_get(c, "tie_word_embeddings", True)),
    )
    cfg.validate()
    return cfg


def encoder_config_to_hf(config: EncoderConfig):
    import transformers

    c = config.resolved()
    common = dict(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layer, num_attention_heads=c.n_head,
        intermediate_size=c.d_ff, hidden_act=c.activation, hidden_dropout_prob=c.dropout,
        attention_probs_dropout_prob=c.dropout, max_position_embeddings=c.max_seq_len + c.position_offset,
        type_vocab_size=c.type_vocab_size, initializer_range=c.init_std, layer_norm_eps=c.norm_eps,
        pad_token_id=c.pad_token_id, tie_word_embeddings=c.tie_embeddings)
    if c.family == "bert":
        if c.embedding_size != c.d_model or c.n_layer_groups != c.n_layer:
            raise ValueError("BERT in Hugging Face cannot express embedding_size != d_model or shared layers "
                             "(use family = \"albert\")")
        return transformers.BertConfig(**common)
    if c.family == "roberta":
        if c.embedding_size != c.d_model or c.n_layer_groups != c.n_layer:
            raise ValueError("RoBERTa in Hugging Face cannot express embedding_size != d_model or shared layers")
        return transformers.RobertaConfig(**common, bos_token_id=None, eos_token_id=None)
    return transformers.AlbertConfig(**common, embedding_size=c.embedding_size, num_hidden_groups=c.n_layer_groups,
                                     inner_group_num=1, classifier_dropout_prob=c.dropout,
                                     bos_token_id=None, eos_token_id=None)


# ---- state dicts ------------------------------------------------------------------------------
def _layer_names(family: str) -> tuple[str, list[tuple[str, str, ...]]]:
    """(HF prefix of block i's weights as a format string, [(fastlm name, *HF names)])."""
    if family == "albert":
        return "encoder.albert_layer_groups.{i}.albert_layers.0.", [
            ("attn.qkv", "attention.query", "attention.key", "attention.value"),
            ("attn.proj", "attention.dense"), ("norm1", "attention.LayerNorm"),
            ("mlp.fc", "ffn"), ("mlp.proj", "ffn_output"), ("norm2", "full_layer_layer_norm")]
    return "encoder.layer.{i}.", [
        ("attn.qkv", "attention.self.query", "attention.self.key", "attention.self.value"),
        ("attn.proj", "attention.output.dense"), ("norm1", "attention.output.LayerNorm"),
        ("mlp.fc", "intermediate.dense"), ("mlp.proj", "output.dense"), ("norm2", "output.LayerNorm")]


def _head_names(family: str) -> tuple[list[tuple[str, str]], str | None]:
    """[(fastlm MLM-head name, HF name)] without the decoder weight, and the HF 2-way head's name."""
    if family == "bert":
        p = "cls.predictions."
        return [("dense", p + "transform.dense"), ("norm", p + "transform.LayerNorm"),
                ("decoder.bias", p + "bias")], "cls.seq_relationship"
    if family == "roberta":
        return [("dense", "lm_head.dense"), ("norm", "lm_head.layer_norm"), ("decoder.bias", "lm_head.bias")], None
    return [("dense", "predictions.dense"), ("norm", "predictions.LayerNorm"),
            ("decoder.bias", "predictions.bias")], "sop_classifier.classifier"


def _pooler_name(family: str) -> str:
    return "pooler" if family == "albert" else "pooler.dense"


def _decoder_weight_name(family: str) -> str:
    return {"bert": "cls.predictions.decoder.weight", "roberta": "lm_head.decoder.weight",
            "albert": "predictions.decoder.weight"}[family]


def _encoder_pairs(c: EncoderConfig) -> list[tuple[str, tuple[str, ...]]]:
    """[(fastlm key of the bare encoder, (HF keys without the model prefix, concatenated))]."""
    pairs = [("tok_emb.weight", ("embeddings.word_embeddings.weight",)),
             ("pos_emb.weight", ("embeddings.position_embeddings.weight",)),
             ("type_emb.weight", ("embeddings.token_type_embeddings.weight",)),
             ("emb_norm.weight", ("embeddings.LayerNorm.weight",)),
             ("emb_norm.bias", ("embeddings.LayerNorm.bias",))]
    if c.family == "albert":
        pairs += [(f"emb_proj.{s}", (f"encoder.embedding_hidden_mapping_in.{s}",)) for s in ("weight", "bias")]
    fmt, names = _layer_names(c.family)
    for i in range(c.n_layer_groups):
        for dst, *srcs in names:
            for s in ("weight", "bias"):
                pairs.append((f"blocks.{i}.{dst}.{s}", tuple(fmt.format(i=i) + f"{src}.{s}" for src in srcs)))
    return pairs


def encoder_state_dict_from_hf(config: EncoderConfig, hf_state_dict: Mapping[str, torch.Tensor],
                               where: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
    """Map HF tensors to fastlm keys. Returns (state dict, parts) where parts says which optional
    pieces the checkpoint has: pooler, mlm (head), sentence_order (2-way head).

    The fastlm keys are those of Encoder when there is no MLM head, else of EncoderForMaskedLM.
    Raises ValueError (naming `where` and the keys) for missing, unexpected or misshapen weights."""
    c = config.resolved()
    prefix = c.family + "."
    sd = {}
    for k, v in hf_state_dict.items():
        if k.endswith(_IGNORED_SUFFIXES):
            continue
        sd[k[len(prefix):] if k.startswith(prefix) else k] = v
    head_names, two_way = _head_names(c.family)
    pooler = _pooler_name(c.family)
    parts = {"pooler": pooler + ".weight" in sd,
             "mlm": any(k.startswith(head_names[0][1] + ".") for k in sd),
             "sentence_order": two_way is not None and two_way + ".weight" in sd}
    if parts["sentence_order"] and not parts["pooler"]:
        raise ValueError(f"{where}: has {two_way}.weight but no {pooler}.weight")
    enc = "encoder." if parts["mlm"] else ""
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []

    def put(dst: str, *srcs: str):
        ts = [sd.pop(s, None) for s in srcs]
        if any(t is None for t in ts):
            missing.extend(s for s, t in zip(srcs, ts) if t is None)
            return
        out[dst] = ts[0] if len(ts) == 1 else torch.cat(ts, dim=0)

    for dst, srcs in _encoder_pairs(c):
        put(enc + dst, *srcs)
    if parts["pooler"]:
        for s in ("weight", "bias"):
            put(f"{enc}pooler.dense.{s}", f"{pooler}.{s}")
    if parts["mlm"]:
        for dst, src in head_names:
            if dst == "decoder.bias":
                put("mlm_head.decoder.bias", src)
                sd.pop(src.rsplit(".", 1)[0] + ".decoder.bias", None)  # HF ties it to the same tensor
                continue
            for s in ("weight", "bias"):
                put(f"mlm_head.{dst}.{s}", f"{src}.{s}")
        decoder = _decoder_weight_name(c.family)
        if c.tie_embeddings:
            sd.pop(decoder, None)  # tied: the embedding is the decoder (some checkpoints store both)
        else:
            put("mlm_head.decoder.weight", decoder)
    if parts["sentence_order"]:
        for s in ("weight", "bias"):
            put(f"sop_head.{s}", f"{two_way}.{s}")
    if missing or sd:
        def listed(keys):
            return f"{len(keys)} weight(s): {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"

        problems = []
        if missing:
            problems.append(f"missing {listed(missing)}")
        if sd:
            problems.append(f"unexpected {listed(sorted(sd))}")
        raise ValueError(f"{where} does not match a {c.family} model of its config: {'; '.join(problems)}")
    return out, parts


def encoder_state_dict_to_hf(model, state_dict: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """fastlm Encoder / EncoderForMaskedLM tensors (its state dict, or e.g. its gradients under the
    same keys) -> HF keys (with the model prefix when a head is present)."""
    masked_lm = isinstance(model, EncoderForMaskedLM)
    encoder = model.encoder if masked_lm else model
    c = encoder.config
    sd = {k: v.detach() for k, v in (model.state_dict() if state_dict is None else state_dict).items()}
    enc = "encoder." if masked_lm else ""
    prefix = c.family + "." if masked_lm else ""
    out: dict[str, torch.Tensor] = {}
    for dst, srcs in _encoder_pairs(c):
        t = sd[enc + dst]
        pieces = t.chunk(len(srcs), dim=0) if len(srcs) > 1 else (t,)
        for src, piece in zip(srcs, pieces):
            out[prefix + src] = piece
    if encoder.pooler is not None:
        for s in ("weight", "bias"):
            out[f"{prefix}{_pooler_name(c.family)}.{s}"] = sd[f"{enc}pooler.dense.{s}"]
    if masked_lm:
        head_names, two_way = _head_names(c.family)
        for dst, src in head_names:
            if dst == "decoder.bias":
                out[src] = sd["mlm_head.decoder.bias"]
                out[src.rsplit(".", 1)[0] + ".decoder.bias"] = sd["mlm_head.decoder.bias"]
                continue
            for s in ("weight", "bias"):
                out[f"{src}.{s}"] = sd[f"mlm_head.{dst}.{s}"]
        out[_decoder_weight_name(c.family)] = sd.get("mlm_head.decoder.weight", sd["encoder.tok_emb.weight"])
        if model.sop_head is not None:
            if two_way is None:
                raise ValueError("RoBERTa in Hugging Face has no sentence-order head")
            out[two_way + ".weight"], out[two_way + ".bias"] = sd["sop_head.weight"], sd["sop_head.bias"]
    return {k: v.contiguous() for k, v in out.items()}


# ---- models -----------------------------------------------------------------------------------
def encoder_from_hf(hf_config, state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                    copy: bool = True, where: str = "checkpoint"):
    """Encoder (bare, + pooler if present) or EncoderForMaskedLM (if the weights have an MLM head)."""
    config = encoder_config_from_hf(hf_config)
    sd, parts = encoder_state_dict_from_hf(config, state_dict, where)
    with torch.device("meta"):  # no throwaway random init: adopt the checkpoint tensors
        if parts["mlm"]:
            model = EncoderForMaskedLM(config, sentence_order=parts["sentence_order"])
        else:
            model = Encoder(config, add_pooler=parts["pooler"])
    sd = {k: v.detach().to(dtype=dtype, copy=copy).contiguous() for k, v in sd.items()}
    tied = parts["mlm"] and model.config.tie_embeddings
    if tied:
        sd["mlm_head.decoder.weight"] = sd["encoder.tok_emb.weight"]
    expected = model.state_dict()
    for k, v in sd.items():  # name the key of a misshapen tensor before load_state_dict does
        if k in expected and tuple(expected[k].shape) != tuple(v.shape):
            raise ValueError(f"{where}: weight for {k} has shape {tuple(v.shape)}, the config needs "
                             f"{tuple(expected[k].shape)}")
    model.load_state_dict(sd, strict=True, assign=True)
    if tied:
        model.mlm_head.decoder.weight = model.encoder.tok_emb.weight  # assign=True replaced the shared Parameter
    return model


def encoder_to_hf(model, attn_implementation: str = "sdpa"):
    """The transformers model of the same weights: XModel for an Encoder, XForMaskedLM for
    EncoderForMaskedLM (XForPreTraining with a sentence-order head), X = Bert / Roberta / Albert."""
    import transformers

    masked_lm = isinstance(model, EncoderForMaskedLM)
    encoder = model.encoder if masked_lm else model
    c = encoder.config
    hf_config = encoder_config_to_hf(c)
    hf_config._attn_implementation = attn_implementation
    name = {"bert": "Bert", "roberta": "Roberta", "albert": "Albert"}[c.family]
    if masked_lm:
        suffix = "ForPreTraining" if model.sop_head is not None else "ForMaskedLM"
        if c.family == "roberta" and model.sop_head is not None:
            raise ValueError("RoBERTa in Hugging Face has no sentence-order head")
        hf = getattr(transformers, name + suffix)(hf_config)
    else:
        hf = getattr(transformers, name + "Model")(hf_config, add_pooling_layer=encoder.pooler is not None)
    p = encoder.tok_emb.weight
    hf = hf.to(device=p.device, dtype=p.dtype)
    sd = encoder_state_dict_to_hf(model)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith(_IGNORED_SUFFIXES)]
    if missing or unexpected:
        raise RuntimeError(f"to_hf: weights did not line up (missing {missing}, unexpected {unexpected})")
    if masked_lm and c.tie_embeddings:
        hf.tie_weights()
    hf.train(model.training)
    return hf


# ---- checkpoint directories -------------------------------------------------------------------
def read_weights(d: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of a checkpoint directory: model.safetensors (or its sharded index), else
    pytorch_model.bin read with torch.load(weights_only=True). Errors name the file."""
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    single, index, pickle = d / "model.safetensors", d / "model.safetensors.index.json", d / "pytorch_model.bin"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a safetensors index ({e})") from None
        files = [d / f for f in sorted(set(weight_map.values()))]
    elif pickle.is_file():
        try:
            sd = torch.load(pickle, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, foreign pickle, forbidden global: all unusable
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"{pickle}: cannot read the weights ({why})") from None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ValueError(f"{pickle}: expected a dict of tensors")
        return sd, pickle
    else:
        raise FileNotFoundError(f"{d}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    state_dict: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: shard listed in {index.name} is missing")
        try:
            state_dict.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{f}: cannot read the weights ({e})") from None
    return state_dict, files[0] if len(files) == 1 else index


def load_encoder_checkpoint(d: Path, hf_config: dict[str, Any], dtype: torch.dtype = torch.float32):
    cfg_path = d / "config.json"
    try:
        encoder_config_from_hf(hf_config)
    except ValueError as e:
        raise ValueError(f"{cfg_path}: {e}") from None
    state_dict, source = read_weights(d)
    return encoder_from_hf(hf_config, state_dict, dtype=dtype, copy=False, where=str(source))
