"""`LSTM`, `GRU`, `RNN`: multi-layer recurrent modules on fastlm.ops.lstm / gru / rnn.

Drop-in for torch.nn.LSTM / GRU / RNN (unidirectional): the same constructor arguments that matter
(input_size, hidden_size, num_layers, bias, batch_first, dropout; nonlinearity for RNN), the same
parameter names (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, ...), shapes, gate order and
initialization (uniform(-1/sqrt(H), 1/sqrt(H))), so `load_state_dict(torch_module.state_dict())`
works unchanged. forward(x, hx=None) -> (output, h_n) or, for the LSTM, (output, (h_n, c_n)); x is
(T, B, I) ((B, T, I) with batch_first), unbatched (T, I), or a PackedSequence (output packed too).
Dropout applies to the outputs of every layer but the last, in training only. One step of a batch
without gradients (decoding: CPU float32, x with one time step, under no_grad) runs the whole stack
in one op call (fastlm.ops.recurrent.recurrent_step).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from fastlm.ops.recurrent import gru as gru_op
from fastlm.ops.recurrent import lstm as lstm_op
from fastlm.ops.recurrent import recurrent_step
from fastlm.ops.recurrent import rnn as rnn_op

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


class _Recurrent(nn.Module):
    KIND = ""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        if bidirectional:
            raise ValueError(f"fastlm.nn.{self.KIND}: bidirectional=True is not supported (unidirectional only)")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"fastlm.nn.{self.KIND}: {name} must be a positive int, got {value!r}")
        if not 0.0 <= float(dropout) <= 1.0:
            raise ValueError(f"fastlm.nn.{self.KIND}: dropout must be in [0, 1], got {dropout}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional = False
        gates = _GATES[self.KIND] * hidden_size
        factory = {"device": device, "dtype": dtype}
        for layer in range(num_layers):
            width = input_size if layer == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(gates, width, **factory)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(gates, hidden_size, **factory)))
            if bias:
                self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(gates, **factory)))
                self.register_parameter(f"bias_hh_l{layer}", nn.Parameter(torch.empty(gates, **factory)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn's init: every weight and bias uniform(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def layer_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(weight_ih, weight_hh, bias_ih, bias_hh) of a layer (biases None with bias=False)."""
        get = lambda name: getattr(self, f"{name}_l{layer}", None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def _layer(self, layer: int, x: torch.Tensor, state, batch_sizes):
        raise NotImplementedError

    def _zero_state(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        return torch.zeros(self.num_layers, batch, self.hidden_size, device=x.device, dtype=x.dtype)

    def _step_mode(self) -> str:
        return self.KIND.lower()

    def _single_step(self, x) -> bool:
        """Decoding one step without gradients on CPU float32: the whole stack in one op call."""
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[1 if self.batch_first else 0] != 1:
            return False
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            return False
        if self.training and self.dropout and self.num_layers > 1:
            return False
        return not torch.is_grad_enabled() and self.weight_hh_l0.dtype == torch.float32

    def _step(self, x: torch.Tensor, hx):
        batch = x.shape[0 if self.batch_first else 1]
        states = self._initial_states(x, hx, batch, False, None)
        weights = [w for layer in range(self.num_layers) for w in self.layer_weights(layer)]
        c0 = states[1] if len(states) > 1 else None
        out, h_n, c_n = recurrent_step(x.reshape(batch, -1), weights, states[0], c0, self._step_mode())
        out = out.unsqueeze(1) if self.batch_first else out.unsqueeze(0)
        return out, self._pack_state([h_n] if c_n is None else [h_n, c_n])

    def forward(self, x, hx=None):
        if self._single_step(x):
            if x.shape[-1] != self.input_size:
                raise ValueError(f"fastlm.nn.{self.KIND}: input_size is {self.input_size}, got inputs of width "
                                 f"{x.shape[-1]}")
            return self._step(x, hx)
        packed = isinstance(x, PackedSequence)
        unbatched = False
        batch_sizes = sorted_indices = unsorted_indices = lengths = None
        if packed:
            sorted_indices, unsorted_indices = x.sorted_indices, x.unsorted_indices
            batch_sizes = x.batch_sizes
            seq, lengths = pad_packed_sequence(PackedSequence(x.data, x.batch_sizes))  # (T, B, I), sorted order
        else:
            if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
                raise ValueError(f"fastlm.nn.{self.KIND}: input must be (seq, batch, {self.input_size}), batch_first "
                                 f"(batch, seq, ...), unbatched (seq, ...) or a PackedSequence, got "
                                 f"{getattr(x, 'shape', type(x).__name__)}")
            unbatched = x.dim() == 2
            seq = x.unsqueeze(1) if unbatched else (x.transpose(0, 1) if self.batch_first else x)
        if seq.shape[-1] != self.input_size:
            raise ValueError(f"fastlm.nn.{self.KIND}: input_size is {self.input_size}, got inputs of width "
                             f"{seq.shape[-1]}")
        batch = seq.shape[1]
        states = self._initial_states(seq, hx, batch, unbatched, sorted_indices)
        finals = []
        for layer in range(self.num_layers):
            seq, final = self._layer(layer, seq, tuple(s[layer] for s in states), batch_sizes)
            finals.append(final)
            if self.dropout and self.training and layer < self.num_layers - 1:
                seq = F.dropout(seq, self.dropout, training=True)
        final_states = [torch.stack(parts) for parts in zip(*finals)]
        if packed:
            data = pack_padded_sequence(seq, lengths).data
            output = PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                final_states = [s.index_select(1, unsorted_indices) for s in final_states]
        else:
            output = seq.squeeze(1) if unbatched else (seq.transpose(0, 1) if self.batch_first else seq)
        if unbatched:
            final_states = [s.squeeze(1) for s in final_states]
        return output, self._pack_state(final_states)

    def _initial_states(self, seq, hx, batch, unbatched, sorted_indices) -> list[torch.Tensor]:
        parts = self._unpack_state(hx)
        if parts is None:
            return [self._zero_state(seq, batch) for _ in range(self._state_count())]
        out = []
        for s in parts:
            s = s.unsqueeze(1) if unbatched else s
            if tuple(s.shape) != (self.num_layers, batch, self.hidden_size):
                raise ValueError(f"fastlm.nn.{self.KIND}: hidden state must be ({self.num_layers}, {batch}, "
                                 f"{self.hidden_size}), got {tuple(s.shape)}")
            out.append(s.index_select(1, sorted_indices) if sorted_indices is not None else s)
        return out

    def _state_count(self) -> int:
        return 1

    def _unpack_state(self, hx):
        return None if hx is None else [hx]

    def _pack_state(self, states):
        return states[0]

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, bias={self.bias}, "
                f"batch_first={self.batch_first}, dropout={self.dropout}")


class LSTM(_Recurrent):
    """torch.nn.LSTM's interface on fastlm.ops.lstm: forward(x, (h0, c0)=None) -> (output, (h_n, c_n))."""

    KIND = "LSTM"

    def _layer(self, layer, x, state, batch_sizes):
        out, h, c = lstm_op(x, *self.layer_weights(layer), state[0], state[1], batch_sizes)
        return out, (h, c)

    def _state_count(self) -> int:
        return 2

    def _unpack_state(self, hx):
        if hx is None:
            return None
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise ValueError("fastlm.nn.LSTM: hx must be a pair (h0, c0)")
        return list(hx)

    def _pack_state(self, states):
        return states[0], states[1]


class GRU(_Recurrent):
    """torch.nn.GRU's interface on fastlm.ops.gru: forward(x, h0=None) -> (output, h_n)."""

    KIND = "GRU"

    def _layer(self, layer, x, state, batch_sizes):
        out, h = gru_op(x, *self.layer_weights(layer), state[0], batch_sizes)
        return out, (h,)


class RNN(_Recurrent):
    """torch.nn.RNN's interface on fastlm.ops.rnn (nonlinearity "tanh" or "relu")."""

    KIND = "RNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"fastlm.nn.RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype)

    def _step_mode(self) -> str:
        return f"rnn_{self.nonlinearity}"

    def _layer(self, layer, x, state, batch_sizes):
        out, h = rnn_op(x, *self.layer_weights(layer), state[0], batch_sizes, self.nonlinearity)
        return out, (h,)
