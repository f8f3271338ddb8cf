"""fastlm.ops: one public function per op. The only place that picks an implementation."""
from fastlm.ops.norms import layer_norm, rms_norm

__all__ = ["rms_norm", "layer_norm"]
