"""fastlm.optim: optimizers whose step is one native call (fastlm.ops.adamw_step)."""
from fastlm.optim.adamw import AdamW

__all__ = ["AdamW"]
