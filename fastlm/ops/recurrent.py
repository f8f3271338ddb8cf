"""Whole-sequence ops for one recurrent layer: `lstm`, `gru`, `rnn` (torch.nn's math, gate order and bias pair).

    out, h_n, c_n = fastlm.ops.lstm(x, w_ih, w_hh, b_ih, b_hh, h0, c0)   # x (T, B, I) -> out (T, B, H)
    out, h_n = fastlm.ops.gru(x, w_ih, w_hh, b_ih, b_hh, h0)
    out, h_n = fastlm.ops.rnn(x, w_ih, w_hh, b_ih, b_hh, h0, nonlinearity="tanh")

The input projection x @ W_ih^T + b_ih of all steps is one GEMM (F.linear, autograd by torch); the
recurrence is torch.ops.fastlm.recurrent_fwd: per step one GEMM h @ W_hh^T + b_hh and one fused pass
of the gate math, and its backward (recurrent_bwd) runs back through time in the same way, with
dW_hh as one GEMM over all steps. batch_sizes (T,) int64 (a PackedSequence's) makes the leading
batch_sizes[t] rows active at step t: inactive rows keep their state and output zeros.

CPU float32 runs the C++ kernels (csrc/cpu/recurrent.cpp); bfloat16/float16 inputs (e.g. autocast)
run the recurrence in float32 and return the input's dtype; float64 and FASTLM_BACKEND=reference run
the plain-torch reference (reference_recurrent.py). CUDA tensors run the forward recurrence with a
Triton kernel for the fused gate math of each step (kernels/recurrent.py) and the reference backward
(autograd through the reference recurrence); decoding steps (recurrent_step) use the reference there.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from fastlm.ops import reference_recurrent as reference
from fastlm.ops._backend import use_reference
from fastlm.ops._library import has_native_op, register_backward_op, register_op
from fastlm.ops.reference_recurrent import GATES, GRU, LSTM, RNN_RELU, RNN_TANH, SAVED


def _fwd_fake(xproj, w_hh, b_hh, h0, c0, batch_sizes, mode):
    steps, batch, _ = xproj.shape
    hidden = w_hh.shape[1]
    return (xproj.new_empty(steps, batch, hidden), torch.empty_like(h0), torch.empty_like(c0),
            xproj.new_empty(steps, batch, SAVED[mode] * hidden))


def _bwd_fake(grad_out, grad_hn, grad_cn, xproj, w_hh, b_hh, h0, c0, out, saved, batch_sizes, mode):
    grad_b = torch.empty_like(b_hh) if b_hh is not None else xproj.new_empty(0)
    return torch.empty_like(xproj), torch.empty_like(h0), torch.empty_like(c0), torch.empty_like(w_hh), grad_b


def _triton_fwd():
    from fastlm.kernels import recurrent as triton_recurrent

    return triton_recurrent.recurrent_fwd


register_op("recurrent_fwd", reference=reference.recurrent_fwd, triton=_triton_fwd, fake=_fwd_fake)
register_op("recurrent_bwd", reference=reference.recurrent_bwd, triton=None, fake=_bwd_fake)
register_backward_op("recurrent_bwd")
register_op("recurrent_step", reference=reference.recurrent_step, triton=None,
            fake=lambda x, weights, h0, c0, mode: (x.new_empty(x.shape[0], h0.shape[2]), torch.empty_like(h0),
                                                   torch.empty_like(c0)))


def _setup(ctx, inputs, output):
    xproj, w_hh, b_hh, h0, c0, batch_sizes, mode = inputs
    out, _h_n, _c_n, saved = output
    ctx.save_for_backward(xproj, w_hh, b_hh, h0, c0, out, saved, batch_sizes)
    ctx.mode = mode
    ctx.has_bias = b_hh is not None


def _backward(ctx, grad_out, grad_hn, grad_cn, _grad_saved):
    xproj, w_hh, b_hh, h0, c0, out, saved, batch_sizes = ctx.saved_tensors
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out.contiguous()
    grad_hn = torch.zeros_like(h0) if grad_hn is None else grad_hn.contiguous()
    grad_cn = torch.zeros_like(c0) if grad_cn is None else grad_cn.contiguous()
    args = (grad_out, grad_hn, grad_cn, xproj, w_hh, b_hh if ctx.has_bias else None, h0, c0, out, saved,
            batch_sizes, ctx.mode)
    if xproj.device.type == "cpu" and has_native_op("recurrent_bwd"):
        gx, gh0, gc0, gw, gb = torch.ops.fastlm.recurrent_bwd(*args)
    else:  # the reference differentiates its recurrence with autograd: called here, not below the dispatcher
        gx, gh0, gc0, gw, gb = reference.recurrent_bwd(*args)
    return gx, gw, (gb if ctx.has_bias else None), gh0, gc0, None, None


torch.library.register_autograd("fastlm::recurrent_fwd", _backward, setup_context=_setup)


@functools.lru_cache(maxsize=None)
def _onednn_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


_ONEDNN_ROWS = 64  # below, packing the weight costs more than it saves (decoding is 1 row a step)


def _dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T + bias: oneDNN with the weight packed for this call on CPU float32
    (about twice MKL's speed for these shapes, like torch.nn.LSTM's own path) for 64 rows or more,
    else F.linear."""
    if x.shape[0] >= _ONEDNN_ROWS and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 \
            and _onednn_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), x.shape[0])
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return F.linear(x, weight, bias)


class _InputProjection(torch.autograd.Function):
    """x (T, B, I) @ W_ih^T + b_ih for all steps: one GEMM forward, two GEMMs backward (dx, dW_ih)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _dense(x.reshape(-1, x.shape[-1]), weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, weight.shape[0])
        x2 = x.reshape(-1, x.shape[-1])
        grad_x = _dense(g, weight.t()).view_as(x) if ctx.needs_input_grad[0] else None
        grad_w = _dense(g.t(), x2.t()) if ctx.needs_input_grad[1] else None
        grad_b = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def _project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if x.dtype == weight.dtype == torch.float32 and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu") \
            and not use_reference(x):
        return _InputProjection.apply(x, weight, bias)
    return F.linear(x, weight, bias)  # autocast, other dtypes and devices: torch's own linear


def _check(name: str, x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih, b_hh, h0, gates: int) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 3:
        raise ValueError(f"{name}: x must be a floating-point (seq, batch, input_size) tensor, got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if x.shape[0] < 1:
        raise ValueError(f"{name}: x must have at least one step, got shape {tuple(x.shape)}")
    hidden = w_hh.shape[-1]
    if w_hh.dim() != 2 or w_hh.shape[0] != gates * hidden:
        raise ValueError(f"{name}: w_hh must be ({gates}*hidden, hidden), got {tuple(w_hh.shape)}")
    if w_ih.dim() != 2 or tuple(w_ih.shape) != (gates * hidden, x.shape[-1]):
        raise ValueError(f"{name}: w_ih must be ({gates * hidden}, {x.shape[-1]}) for x {tuple(x.shape)}, "
                         f"got {tuple(w_ih.shape)}")
    for bias_name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None and tuple(b.shape) != (gates * hidden,):
            raise ValueError(f"{name}: {bias_name} must be ({gates * hidden},), got {tuple(b.shape)}")
    if (b_ih is None) != (b_hh is None):
        raise ValueError(f"{name}: give both biases or neither (torch.nn's bias pair)")
    if h0 is not None and tuple(h0.shape) != (x.shape[1], hidden):
        raise ValueError(f"{name}: initial state must be ({x.shape[1]}, {hidden}), got {tuple(h0.shape)}")


def _batch_sizes(batch_sizes: torch.Tensor | None, steps: int, batch: int) -> torch.Tensor:
    if batch_sizes is None:
        return torch.empty(0, dtype=torch.long)
    sizes = batch_sizes.to("cpu", torch.long)
    if sizes.dim() != 1 or sizes.numel() != steps:
        raise ValueError(f"batch_sizes must be ({steps},), got {tuple(sizes.shape)}")
    if steps and (int(sizes[0]) > batch or bool((sizes[1:] > sizes[:-1]).any()) or int(sizes.min()) < 0):
        raise ValueError(f"batch_sizes must be non-increasing and within [0, {batch}], got {sizes.tolist()}")
    return sizes


def _recurrence(name: str, mode: int, x, w_ih, w_hh, b_ih, b_hh, h0, c0, batch_sizes):
    _check(name, x, w_ih, w_hh, b_ih, b_hh, h0, GATES[mode])
    steps, batch, _ = x.shape
    hidden = w_hh.shape[1]
    sizes = _batch_sizes(batch_sizes, steps, batch)
    xproj = _project(x, w_ih, b_ih)  # all steps in one GEMM
    dtype = xproj.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    if h0 is None:
        h0 = xproj.new_zeros(batch, hidden, dtype=compute)
    if mode == LSTM:
        c0 = xproj.new_zeros(batch, hidden, dtype=compute) if c0 is None else c0
        if tuple(c0.shape) != (batch, hidden):
            raise ValueError(f"{name}: c0 must be ({batch}, {hidden}), got {tuple(c0.shape)}")
    else:
        c0 = xproj.new_empty(0, dtype=compute)
    args = (xproj.to(compute), w_hh.to(compute), None if b_hh is None else b_hh.to(compute), h0.to(compute),
            c0.to(compute), sizes, mode)
    run = reference.recurrent_fwd if use_reference(args[0]) else torch.ops.fastlm.recurrent_fwd
    out, h_n, c_n, _saved = run(*args)
    return out.to(dtype), h_n.to(dtype), c_n.to(dtype)


def lstm(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor | None = None,
         b_hh: torch.Tensor | None = None, h0: torch.Tensor | None = None, c0: torch.Tensor | None = None,
         batch_sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LSTM layer over x (T, B, I): (out (T, B, H), h_n (B, H), c_n (B, H)). Weights as torch.nn.LSTM's
    weight_ih_l0 (4H, I), weight_hh_l0 (4H, H), biases (4H,), gates (i, f, g, o); h0/c0 (B, H) or None (zeros)."""
    return _recurrence("lstm", LSTM, x, w_ih, w_hh, b_ih, b_hh, h0, c0, batch_sizes)


def gru(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor | None = None,
        b_hh: torch.Tensor | None = None, h0: torch.Tensor | None = None,
        batch_sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One GRU layer over x (T, B, I): (out (T, B, H), h_n (B, H)). Gates (r, z, n) as torch.nn.GRU, with
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))."""
    out, h_n, _ = _recurrence("gru", GRU, x, w_ih, w_hh, b_ih, b_hh, h0, None, batch_sizes)
    return out, h_n


def rnn(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor | None = None,
        b_hh: torch.Tensor | None = None, h0: torch.Tensor | None = None, batch_sizes: torch.Tensor | None = None,
        nonlinearity: str = "tanh") -> tuple[torch.Tensor, torch.Tensor]:
    """One Elman RNN layer over x (T, B, I): h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu."""
    modes = {"tanh": RNN_TANH, "relu": RNN_RELU}
    if nonlinearity not in modes:
        raise ValueError(f"rnn: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    out, h_n, _ = _recurrence("rnn", modes[nonlinearity], x, w_ih, w_hh, b_ih, b_hh, h0, None, batch_sizes)
    return out, h_n


def recurrent_step(x: torch.Tensor, weights: list[torch.Tensor], h0: torch.Tensor, c0: torch.Tensor | None,
                   mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One decoding step through a stack of layers in one op call (inference only: no gradients).

    x (B, I); weights: per layer (w_ih, w_hh, b_ih or None, b_hh or None), torch.nn's layout; h0 (L, B, H),
    c0 (L, B, H) for mode "lstm" (else None). mode: "lstm" | "gru" | "rnn_tanh" | "rnn_relu".
    Returns (out (B, H), h_n (L, B, H), c_n or None).
    """
    if mode not in reference.MODES:
        raise ValueError(f"recurrent_step: mode must be one of {', '.join(reference.MODES)}, got {mode!r}")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, h0, c0, *weights)):
        raise ValueError("recurrent_step: inference only (no autograd); use lstm / gru / rnn to train")
    code = reference.MODES[mode]
    empty = x.new_empty(0)
    flat = [t if t is not None else empty for t in weights]
    c = c0 if code == LSTM else empty
    args = (x, flat, h0, c, code)
    if use_reference(x):
        out, h_n, c_n = reference.recurrent_step(*args)
    else:
        out, h_n, c_n = torch.ops.fastlm.recurrent_step(*args)
    return out, h_n, (c_n if code == LSTM else None)
