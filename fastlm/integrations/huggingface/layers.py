"""The forwards that replace Hugging Face's: each computes what the original computes, with fastlm ops.

They are installed either on a modeling class (patch before building) or on a subclass that one
built module is switched to (patch an instance); `fastlm_original_forward(self)` is the forward
they replaced, used for the cases they do not cover.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastlm import ops

ORIGINAL = "_fastlm_original_forward"


def original_forward(module: nn.Module):
    return getattr(type(module), ORIGINAL).__get__(module)


# ---------------------------------------------------------------- norms


def rms_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    eps = getattr(self, "variance_epsilon", None)
    if eps is None:
        eps = getattr(self, "eps", 1e-6)
    return ops.rms_norm(hidden_states, self.weight, eps)


def layer_norm_forward(self, x: torch.Tensor) -> torch.Tensor:
    if len(self.normalized_shape) != 1 or self.weight is None:
        return original_forward(self)(x)
    return ops.layer_norm(x, self.weight, self.bias, self.eps)


# ---------------------------------------------------------------- gated MLP (LLaMA / Mistral / Qwen2)

_GATED = {  # hidden_act -> the fused gated op (looked up at call time)
    "silu": lambda g, u: ops.swiglu(g, u), "swish": lambda g, u: ops.swiglu(g, u),
    "gelu": lambda g, u: ops.geglu(g, u), "gelu_new": lambda g, u: ops.geglu(g, u, "tanh"),
    "gelu_pytorch_tanh": lambda g, u: ops.geglu(g, u, "tanh"), "gelu_fast": lambda g, u: ops.geglu(g, u, "tanh"),
}


def gated_mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    fused = _GATED.get(getattr(getattr(self, "config", None), "hidden_act", None))
    if fused is None:
        return original_forward(self)(x)
    return self.down_proj(fused(self.gate_proj(x), self.up_proj(x)))


# ---------------------------------------------------------------- RoPE (a module-level function in HF)


def make_apply_rotary_pos_emb(original):
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        """HF's apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1) with fastlm.ops.rope.

        q/k (B, H, T, D) (unsqueeze_dim=1) or (B, T, H, D) (unsqueeze_dim=2); cos/sin (B, T, D) or
        (T, D) holding the same angles in both halves (HF's default RoPE, any scaling).
        """
        unsqueeze_dim = args[0] if args else kwargs.get("unsqueeze_dim", 1)
        d = q.shape[-1]
        if (unsqueeze_dim not in (1, 2) or len(args) > 1 or q.dim() != 4 or cos.shape[-1] != d or d % 2
                or cos.dim() not in (2, 3) or (cos.dim() == 3 and cos.shape[0] not in (1, q.shape[0]))):
            return original(q, k, cos, sin, *args, **kwargs)
        c, s = cos[..., : d // 2], sin[..., : d // 2]
        if c.dim() == 3 and c.shape[0] == 1:
            c, s = c[0], s[0]
        if unsqueeze_dim == 1:  # (B, H, T, D): rotate the (B, T, H, D) view; the result keeps HF's layout
            qr, kr = ops.rope(q.transpose(1, 2), k.transpose(1, 2), c, s)
            return qr.transpose(1, 2), kr.transpose(1, 2)
        return ops.rope(q, k, c, s)

    apply_rotary_pos_emb.fastlm_original = original
    return apply_rotary_pos_emb


# ---------------------------------------------------------------- losses


def _causal_lm_loss(hidden, weight, labels, num_items_in_batch=None, ignore_index=-100, shift_labels=None, **_):
    """HF's ForCausalLMLoss (shift by padding the labels, sum / num_items_in_batch or mean), fused with the head."""
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    shift_labels = shift_labels.to(hidden.device)
    if num_items_in_batch is None:
        return ops.linear_cross_entropy(hidden, weight, shift_labels, ignore_index=ignore_index)
    total = ops.linear_cross_entropy(hidden, weight, shift_labels, ignore_index=ignore_index, reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def _logits_loss(logits, labels, num_items_in_batch=None, ignore_index=-100, shift_labels=None, **_):
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    shift_labels = shift_labels.to(logits.device)
    if num_items_in_batch is None:
        return ops.cross_entropy(logits, shift_labels, ignore_index=ignore_index)
    total = ops.cross_entropy(logits, shift_labels, ignore_index=ignore_index, reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def causal_lm_forward(self, input_ids=None, attention_mask=None, labels=None, logits_to_keep=0, **kwargs):
    """A *ForCausalLM / GPT2LMHeadModel forward whose loss is fastlm's.

    Training with labels: the loss comes from ops.linear_cross_entropy on the last hidden states and
    logits are None (never materialized). Otherwise logits as usual, and with labels a fastlm
    cross-entropy on them. Falls back to the original forward when the head is not a plain
    bias-free linear layer.
    """
    from transformers.modeling_outputs import CausalLMOutputWithPast
    from transformers.modeling_utils import slice_logits_to_keep

    head = self.lm_head
    if not isinstance(head, nn.Linear) or head.bias is not None or kwargs.get("return_dict") is False:
        return original_forward(self)(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                                      logits_to_keep=logits_to_keep, **kwargs)
    base = getattr(self, self.base_model_prefix)
    outputs = base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    hidden = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
    logits = loss = None
    if labels is not None and self.training:
        loss = _causal_lm_loss(hidden, head.weight, labels, **kwargs)
    else:
        logits = head(hidden)
        if labels is not None:
            loss = _logits_loss(logits, labels, **kwargs)
    extra = {k: v for k, v in outputs.items() if k != "last_hidden_state"}
    return CausalLMOutputWithPast(loss=loss, logits=logits, **{k: v for k, v in extra.items()
                                                                if k in CausalLMOutputWithPast.__dataclass_fields__})


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """torch.nn.CrossEntropyLoss computed by fastlm.ops.cross_entropy (for class-index targets without
    class weights; anything else goes to torch's)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if (self.weight is not None or input.dim() != 2 or target.dim() != 1 or target.is_floating_point()
                or self.reduction not in ("mean", "sum", "none")):
            return super().forward(input, target)
        return ops.cross_entropy(input, target, ignore_index=self.ignore_index,
                                 label_smoothing=self.label_smoothing, reduction=self.reduction).to(input.dtype)
