"""apply_fastlm / unapply_fastlm: install fastlm's forwards in Hugging Face models, and take them out.

Two ways, as in Liger-Kernel:
- before building (apply_fastlm(family="llama")): the family's modeling classes get fastlm forwards,
  its module-level apply_rotary_pos_emb is replaced, its default attention ("sdpa") resolves to
  fastlm's, and nn.LayerNorm as the modeling file sees it is a fastlm subclass. Every model of the
  family built (or already built) afterwards runs on fastlm;
- on a built model (apply_fastlm(model)): each matching module is switched to a fastlm subclass of
  its own class (same parameters and state dict, isinstance unchanged), the model's attention
  implementation is set to "fastlm". RoPE and BERT's loss are module-level functions/classes in
  transformers, so those two stay patched for the whole family until unapply_fastlm.
"""
from __future__ import annotations

import contextlib
import importlib
import types
from dataclasses import dataclass

from torch import nn

from fastlm.integrations.huggingface import layers
from fastlm.integrations.huggingface.attention import NAME as ATTENTION_NAME
from fastlm.integrations.huggingface.attention import fastlm_attention_forward, register_attention


@dataclass(frozen=True)
class Family:
    rms_norms: tuple[str, ...] = ()
    gated_mlps: tuple[str, ...] = ()
    causal_lms: tuple[str, ...] = ()
    rope: bool = False  # the module has apply_rotary_pos_emb
    layer_norm: bool = False  # the modeling file builds nn.LayerNorm
    ce_loss_class: bool = False  # the modeling file's losses use nn.CrossEntropyLoss (BERT heads)


def _llama_like(prefix: str) -> Family:
    return Family(rms_norms=(f"{prefix}RMSNorm",), gated_mlps=(f"{prefix}MLP",),
                  causal_lms=(f"{prefix}ForCausalLM",), rope=True)


FAMILIES: dict[str, Family] = {
    "llama": _llama_like("Llama"),
    "mistral": _llama_like("Mistral"),
    "qwen2": _llama_like("Qwen2"),
    "gpt2": Family(causal_lms=("GPT2LMHeadModel",), layer_norm=True),
    "bert": Family(layer_norm=True, ce_loss_class=True),
}
OPTIONS = ("attention", "rms_norm", "rope", "swiglu", "cross_entropy")

# What was replaced, to put it back: (owner object, attribute) -> original value.
_saved: dict[tuple[object, str], object] = {}


def _module(family: str) -> types.ModuleType:
    return importlib.import_module(f"transformers.models.{family}.modeling_{family}")


def _set(owner, name: str, value) -> None:
    key = (owner, name)
    if key not in _saved:
        _saved[key] = owner.__dict__.get(name, _MISSING) if isinstance(owner, type) else getattr(owner, name)
    setattr(owner, name, value)


class _Missing:
    pass


_MISSING = _Missing()


def _patch_forward(cls: type, forward) -> None:
    if cls.__dict__.get("forward") is forward:
        return  # already patched: idempotent
    _set(cls, layers.ORIGINAL, cls.forward)
    _set(cls, "forward", forward)


# ---------------------------------------------------------------- module-level patches (both modes)


class _LayerNorm(nn.LayerNorm):
    """nn.LayerNorm computed by fastlm.ops.layer_norm (what the patched modeling file builds)."""
    forward = layers.layer_norm_forward
    _fastlm_original_forward = nn.LayerNorm.forward


def _patch_module_level(family: str, spec: Family, options: dict[str, bool]) -> None:
    module = _module(family)
    if options["rope"] and spec.rope:
        current = module.apply_rotary_pos_emb
        if not hasattr(current, "fastlm_original"):
            _set(module, "apply_rotary_pos_emb", layers.make_apply_rotary_pos_emb(current))
    if options["cross_entropy"] and spec.ce_loss_class and hasattr(module, "CrossEntropyLoss"):
        _set(module, "CrossEntropyLoss", layers.CrossEntropyLoss)


def _patch_family_classes(family: str, spec: Family, options: dict[str, bool]) -> None:
    module = _module(family)
    if options["rms_norm"]:
        for name in spec.rms_norms:
            _patch_forward(getattr(module, name), layers.rms_norm_forward)
        if spec.layer_norm and getattr(module.nn, "__name__", "") != "fastlm_nn":
            proxy = types.ModuleType("fastlm_nn")  # torch.nn with LayerNorm swapped, for this file only
            proxy.__getattr__ = lambda name: getattr(nn, name)
            proxy.LayerNorm = _LayerNorm
            _set(module, "nn", proxy)
    if options["swiglu"]:
        for name in spec.gated_mlps:
            _patch_forward(getattr(module, name), layers.gated_mlp_forward)
    if options["cross_entropy"]:
        for name in spec.causal_lms:
            _patch_forward(getattr(module, name), layers.causal_lm_forward)
    if options["attention"]:
        from transformers.modeling_utils import AttentionInterface

        class _DefaultIsFastlm(AttentionInterface):
            """The family's attention lookup, with the default ("sdpa") resolved to fastlm's."""

            def get_interface(self, attn_implementation, default):
                if attn_implementation == "sdpa":
                    return fastlm_attention_forward
                return super().get_interface(attn_implementation, default)

        if type(module.ALL_ATTENTION_FUNCTIONS).__name__ != "_DefaultIsFastlm":
            _set(module, "ALL_ATTENTION_FUNCTIONS", _DefaultIsFastlm())


# ---------------------------------------------------------------- instance patches

_subclasses: dict[tuple[type, object], type] = {}


def _switch_class(module: nn.Module, forward) -> None:
    cls = type(module)
    if getattr(cls, "forward", None) is forward:
        return  # already fastlm's (patched class or earlier switch)
    key = (cls, forward)
    if key not in _subclasses:
        _subclasses[key] = type(f"Fastlm{cls.__name__}", (cls,), {
            "forward": forward, layers.ORIGINAL: cls.forward, "_fastlm_base": cls, "__module__": cls.__module__})
    module.__class__ = _subclasses[key]


def _patch_instance(model: nn.Module, spec: Family, options: dict[str, bool]) -> None:
    for m in model.modules():
        name = type(m).__name__
        if options["rms_norm"] and name in spec.rms_norms:
            _switch_class(m, layers.rms_norm_forward)
        elif options["rms_norm"] and spec.layer_norm and type(m) is nn.LayerNorm:
            _switch_class(m, layers.layer_norm_forward)
        elif options["swiglu"] and name in spec.gated_mlps:
            _switch_class(m, layers.gated_mlp_forward)
    if options["cross_entropy"] and type(model).__name__ in spec.causal_lms:
        _switch_class(model, layers.causal_lm_forward)
    if options["attention"]:
        model.set_attn_implementation(ATTENTION_NAME)


def _family_of(model: nn.Module) -> str:
    parts = type(model).__module__.split(".")
    family = parts[2] if len(parts) > 3 and parts[:2] == ["transformers", "models"] else None
    if family not in FAMILIES:
        raise ValueError(f"apply_fastlm: {type(model).__name__} ({type(model).__module__}) is not of a supported "
                         f"family ({', '.join(FAMILIES)}); pass family= to say which one it follows")
    return family


# ---------------------------------------------------------------- public API


def apply_fastlm(model: nn.Module | None = None, *, family: str | None = None, attention: bool = True,
                 rms_norm: bool = True, rope: bool = True, swiglu: bool = True, cross_entropy: bool = True):
    """Runs a Hugging Face model (or every model of `family` built from now on) on fastlm's kernels.

    model: a built transformers model (patched in place and returned); None patches the modeling
    classes of `family` ("llama", "mistral", "qwen2", "gpt2", "bert") instead. rms_norm covers the
    family's norm (RMSNorm or LayerNorm); cross_entropy the LM loss (fused with the head when
    training). Idempotent; unapply_fastlm() undoes it.
    """
    if model is None and family is None:
        raise ValueError("apply_fastlm: pass a model, or family= to patch the classes before building one")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"apply_fastlm: model must be a torch.nn.Module, got {type(model).__name__}")
    family = family or _family_of(model)
    if family not in FAMILIES:
        raise ValueError(f"apply_fastlm: unknown family {family!r}; supported: {', '.join(FAMILIES)}")
    options = dict(attention=attention, rms_norm=rms_norm, rope=rope, swiglu=swiglu, cross_entropy=cross_entropy)
    for key, value in options.items():
        if not isinstance(value, bool):
            raise TypeError(f"apply_fastlm: {key} must be True or False, got {value!r}")
    spec = FAMILIES[family]
    register_attention()
    _patch_module_level(family, spec, options)
    if model is None:
        _patch_family_classes(family, spec, options)
        return None
    _patch_instance(model, spec, options)
    return model


def unapply_fastlm(model: nn.Module | None = None) -> None:
    """Undoes apply_fastlm: a model's switched modules go back to their classes (and attention to
    "sdpa"); without a model every class- and module-level patch is undone."""
    if model is not None:
        for m in model.modules():
            base = type(m).__dict__.get("_fastlm_base")
            if base is not None:
                m.__class__ = base
        if getattr(model.config, "_attn_implementation", None) == ATTENTION_NAME:
            model.set_attn_implementation("sdpa")
        return
    for (owner, name), value in reversed(list(_saved.items())):
        if value is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, value)
    _saved.clear()


@contextlib.contextmanager
def fastlm_patched(model: nn.Module | None = None, **kwargs):
    """with fastlm_patched(family="llama"): ...   (apply_fastlm on entry, unapply_fastlm on exit)."""
    apply_fastlm(model, **kwargs)
    try:
        yield model
    finally:
        unapply_fastlm(model)
        if model is not None:
            unapply_fastlm()
