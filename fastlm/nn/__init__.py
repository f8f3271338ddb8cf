"""fastlm.nn: the modules models are built from (norms, MLP, attention, Transformer block)."""
from fastlm.nn.activations import ACTIVATIONS, get_activation
from fastlm.nn.attention import Attention, attention
from fastlm.nn.block import Block
from fastlm.nn.int8_linear import Int8Linear
from fastlm.nn.kv_cache import KVCache
from fastlm.nn.layers import Layers
from fastlm.nn.linear import Linear
from fastlm.nn.mlp import MLP
from fastlm.nn.norms import LayerNorm, RMSNorm
from fastlm.nn.recurrent import GRU, LSTM, RNN
from fastlm.nn.rope import apply_rope, rope_cos_sin, rotate_half

__all__ = ["ACTIVATIONS", "get_activation", "Attention", "attention", "Block", "Int8Linear", "KVCache", "Layers", "Linear", "MLP",
           "LayerNorm", "RMSNorm", "apply_rope", "rope_cos_sin", "rotate_half", "LSTM", "GRU", "RNN"]
