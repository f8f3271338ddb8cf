"""fastlm: train Transformer language models fast."""
__version__ = "0.1.0"

from fastlm import _native  # noqa: F401  (loads fastlm._C and registers the ops)
