"""fastlm.ops: one public function per op. The only place that picks an implementation."""
from fastlm.ops.attention import attention
from fastlm.ops.cast_scale import cast_scale
from fastlm.ops.norms import layer_norm, rms_norm

__all__ = ["rms_norm", "layer_norm", "cast_scale", "attention"]
