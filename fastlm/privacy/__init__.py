"""Private training: DP-SGD (per-sample clipping without per-sample gradients, noise, accounting),
leakage audits and encrypted checkpoints (fastlm.privacy.encryption).

    model, optimizer = fastlm.privacy.make_private(model, optimizer, noise_multiplier=1.0,
                                                   max_grad_norm=1.0, expected_batch_size=256)
"""
from fastlm.privacy.api import make_private
from fastlm.privacy.layers import apply_dp_sgd

__all__ = ["make_private", "apply_dp_sgd"]
