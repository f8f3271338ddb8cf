"""fastlm.ops: one public function per op. The only place that picks an implementation."""
from fastlm.ops.adamw import adamw_step
from fastlm.ops.attention import attention
from fastlm.ops.cast_scale import cast_scale
from fastlm.ops.cross_entropy import cross_entropy
from fastlm.ops.hashed_window_sum import hashed_window_sum
from fastlm.ops import hmm  # noqa: F401  (registers torch.ops.fastlm.hmm_*; fastlm.lm.HMM calls it)
from fastlm.ops.int8_matmul import PackedInt8Weight, int8_matmul, int8_weight_matmul, pack_int8_weight
from fastlm.ops.linear_cross_entropy import linear_cross_entropy
from fastlm.ops.linear_distill import linear_distill_loss
from fastlm.ops.logits_distill import logits_distill_loss
from fastlm.ops.lora_matmul import lora_matmul
from fastlm.ops.matmul import matmul
from fastlm.ops.norms import add_rms_norm, layer_norm, rms_norm
from fastlm.ops.recurrent import gru, lstm, rnn
from fastlm.ops.quantize import quantize_per_channel, quantize_per_token
from fastlm.ops.rope import rope
from fastlm.ops.sparse24 import sparse24_matmul
from fastlm.ops.swiglu import gated_packed, geglu, swiglu
from fastlm.ops.watermark import watermark_bias

__all__ = ["rms_norm", "add_rms_norm", "layer_norm", "cast_scale", "attention", "quantize_per_token", "quantize_per_channel", "int8_matmul",
           "int8_weight_matmul", "pack_int8_weight", "PackedInt8Weight", "lora_matmul",
           "rope", "swiglu", "geglu", "gated_packed", "cross_entropy", "linear_cross_entropy", "linear_distill_loss", "logits_distill_loss",
           "matmul", "hashed_window_sum", "lstm", "gru", "rnn", "watermark_bias", "sparse24_matmul", "adamw_step"]
