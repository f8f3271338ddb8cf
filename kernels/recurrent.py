"""The recurrence of one RNN / LSTM / GRU layer on CUDA: per step one GEMM (h @ W_hh^T + b_hh, cuBLAS)
and one Triton kernel for the fused gate math of the active rows (the same math and saved layout as
csrc/cpu/recurrent_kernel.cpp and fastlm/ops/reference_recurrent.py). Forward only: the backward on
CUDA is the reference's. MODE: 0 LSTM, 1 GRU, 2 RNN tanh, 3 RNN relu.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

BLOCK = 256


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _cell_fwd_kernel(XP, HP, H, C, OUT, SAVED, hidden, MODE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < hidden
    if MODE == 0:
        g4 = row * 4 * hidden
        i = tl.sigmoid(tl.load(XP + g4 + cols, mask=mask) + tl.load(HP + g4 + cols, mask=mask))
        f = tl.sigmoid(tl.load(XP + g4 + hidden + cols, mask=mask) + tl.load(HP + g4 + hidden + cols, mask=mask))
        g = _tanh(tl.load(XP + g4 + 2 * hidden + cols, mask=mask) + tl.load(HP + g4 + 2 * hidden + cols, mask=mask))
        o = tl.sigmoid(tl.load(XP + g4 + 3 * hidden + cols, mask=mask) + tl.load(HP + g4 + 3 * hidden + cols, mask=mask))
        c = f * tl.load(C + row * hidden + cols, mask=mask) + i * g
        h = o * _tanh(c)
        tl.store(C + row * hidden + cols, c, mask=mask)
        s = row * 5 * hidden
        tl.store(SAVED + s + cols, i, mask=mask)
        tl.store(SAVED + s + hidden + cols, f, mask=mask)
        tl.store(SAVED + s + 2 * hidden + cols, g, mask=mask)
        tl.store(SAVED + s + 3 * hidden + cols, o, mask=mask)
        tl.store(SAVED + s + 4 * hidden + cols, c, mask=mask)
    elif MODE == 1:
        g3 = row * 3 * hidden
        r = tl.sigmoid(tl.load(XP + g3 + cols, mask=mask) + tl.load(HP + g3 + cols, mask=mask))
        z = tl.sigmoid(tl.load(XP + g3 + hidden + cols, mask=mask) + tl.load(HP + g3 + hidden + cols, mask=mask))
        hn = tl.load(HP + g3 + 2 * hidden + cols, mask=mask)
        n = _tanh(tl.load(XP + g3 + 2 * hidden + cols, mask=mask) + r * hn)
        h = (1.0 - z) * n + z * tl.load(H + row * hidden + cols, mask=mask)
        s = row * 4 * hidden
        tl.store(SAVED + s + cols, r, mask=mask)
        tl.store(SAVED + s + hidden + cols, z, mask=mask)
        tl.store(SAVED + s + 2 * hidden + cols, n, mask=mask)
        tl.store(SAVED + s + 3 * hidden + cols, hn, mask=mask)
    else:
        a = tl.load(XP + row * hidden + cols, mask=mask) + tl.load(HP + row * hidden + cols, mask=mask)
        if MODE == 2:
            h = _tanh(a)
        else:
            h = tl.maximum(a, 0.0)
    tl.store(OUT + row * hidden + cols, h, mask=mask)
    tl.store(H + row * hidden + cols, h, mask=mask)


_GATES = {0: 4, 1: 3, 2: 1, 3: 1}
_SAVED = {0: 5, 1: 4, 2: 0, 3: 0}


def recurrent_fwd(xproj: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor | None, h0: torch.Tensor,
                  c0: torch.Tensor, batch_sizes: torch.Tensor, mode: int):
    """torch.ops.fastlm.recurrent_fwd on CUDA (float32): (out, h_n, c_n, saved)."""
    steps, batch, _ = xproj.shape
    hidden = w_hh.shape[1]
    xproj = xproj.contiguous()
    out = xproj.new_zeros(steps, batch, hidden)
    saved = xproj.new_zeros(steps, batch, _SAVED[mode] * hidden)
    h = h0.contiguous().clone()
    c = c0.contiguous().clone()
    rows = [batch] * steps if batch_sizes.numel() == 0 else [int(n) for n in batch_sizes.tolist()]
    for t, n in enumerate(rows):
        if n == 0:
            continue
        hp = F.linear(h[:n], w_hh, b_hh).contiguous()
        grid = (n, triton.cdiv(hidden, BLOCK))
        _cell_fwd_kernel[grid](xproj[t], hp, h, c if mode == 0 else h, out[t], saved[t], hidden, MODE=mode,
                               BLOCK=BLOCK)
    return out, h, c, saved
