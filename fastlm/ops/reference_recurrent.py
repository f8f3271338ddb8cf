"""Plain-torch reference of the recurrence of one RNN / LSTM / GRU layer (the tests' oracle and the
fallback kernel when the C++ extension is missing).

The op runs the recurrence only: the input projection xproj = x @ W_ih^T + b_ih for all steps is one
GEMM before it (fastlm/ops/recurrent.py). Per step, hproj = h @ W_hh^T + b_hh and (torch.nn's gate
order and bias pair):

    LSTM (mode 0): i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of xproj + hproj
                   c' = f * c + i * g,  h' = o * tanh(c')
    GRU  (mode 1): r = sigmoid(x_r + h_r), z = sigmoid(x_z + h_z), n = tanh(x_n + r * h_n)
                   h' = (1 - z) * n + z * h
    RNN  (mode 2 tanh, 3 relu): h' = act(xproj + hproj)

Packed (variable-length) batches: batch_sizes (T,) int64, non-increasing, says how many leading rows
are active at each step (torch's PackedSequence order, lengths sorted descending); an inactive row
keeps its state and outputs zeros. An empty batch_sizes means every row is active at every step.

Saved for the backward (`saved`, (T, B, S)): LSTM the activated gates i, f, g, o and the cell c'
(S = 5H); GRU r, z, n and h_n (S = 4H); RNN nothing (S = 0: the outputs suffice).
"""
from __future__ import annotations

import torch

LSTM, GRU, RNN_TANH, RNN_RELU = 0, 1, 2, 3
MODES = {"lstm": LSTM, "gru": GRU, "rnn_tanh": RNN_TANH, "rnn_relu": RNN_RELU}
GATES = {LSTM: 4, GRU: 3, RNN_TANH: 1, RNN_RELU: 1}
SAVED = {LSTM: 5, GRU: 4, RNN_TANH: 0, RNN_RELU: 0}  # saved width in units of H


def active_rows(batch_sizes: torch.Tensor, steps: int, batch: int) -> list[int]:
    """The number of active rows at each step."""
    if batch_sizes.numel() == 0:
        return [batch] * steps
    return [int(n) for n in batch_sizes.tolist()]


def _cell(mode: int, xp: torch.Tensor, hp: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    """One step for a block of rows: (h', c', saved row)."""
    if mode == LSTM:
        i, f, g, o = (xp + hp).chunk(4, dim=-1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c = f * c + i * g
        return o * c.tanh(), c, torch.cat([i, f, g, o, c], dim=-1)
    if mode == GRU:
        xr, xz, xn = xp.chunk(3, dim=-1)
        hr, hz, hn = hp.chunk(3, dim=-1)
        r, z = (xr + hr).sigmoid(), (xz + hz).sigmoid()
        n = (xn + r * hn).tanh()
        return (1 - z) * n + z * h, c, torch.cat([r, z, n, hn], dim=-1)
    a = xp + hp
    h = a.tanh() if mode == RNN_TANH else a.relu()
    return h, c, h.new_empty(h.shape[0], 0)


def recurrent_fwd(xproj: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor | None, h0: torch.Tensor,
                  c0: torch.Tensor, batch_sizes: torch.Tensor, mode: int):
    """(out (T, B, H), h_n (B, H), c_n (B, H), saved (T, B, S)); c0/c_n are only used by the LSTM."""
    steps, batch, _ = xproj.shape
    hidden = w_hh.shape[1]
    out = xproj.new_zeros(steps, batch, hidden)
    saved = xproj.new_zeros(steps, batch, SAVED[mode] * hidden)
    h, c = h0.clone(), c0.clone()
    for t, n in enumerate(active_rows(batch_sizes, steps, batch)):
        hp = torch.nn.functional.linear(h[:n], w_hh, b_hh)
        h_new, c_new, s = _cell(mode, xproj[t, :n], hp, h[:n], c[:n])
        h = torch.cat([h_new, h[n:]])
        if mode == LSTM:
            c = torch.cat([c_new, c[n:]])
        out[t, :n] = h_new
        saved[t, :n] = s
    return out, h, c, saved


def recurrent_bwd(grad_out: torch.Tensor, grad_hn: torch.Tensor, grad_cn: torch.Tensor, xproj: torch.Tensor,
                  w_hh: torch.Tensor, b_hh: torch.Tensor | None, h0: torch.Tensor, c0: torch.Tensor,
                  out: torch.Tensor, saved: torch.Tensor, batch_sizes: torch.Tensor, mode: int):
    """(grad_xproj, grad_h0, grad_c0, grad_w_hh, grad_b_hh) by autograd through the forward above
    (out and saved are not needed here; the C++ kernel uses them instead of recomputing)."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in (xproj, w_hh, h0, c0)]
        bias = b_hh.detach().requires_grad_(True) if b_hh is not None else None
        o, h, c, _ = recurrent_fwd(leaves[0], leaves[1], bias, leaves[2], leaves[3], batch_sizes, mode)
        inputs = leaves + ([bias] if bias is not None else [])
        grads = torch.autograd.grad((o, h, c), inputs, (grad_out, grad_hn, grad_cn), allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, inputs)]
    grad_b = grads[4] if bias is not None else xproj.new_empty(0)
    return grads[0], grads[2], grads[3], grads[1], grad_b


def recurrent_step(x: torch.Tensor, weights: list[torch.Tensor], h0: torch.Tensor, c0: torch.Tensor, mode: int):
    """One step through a stack of layers: (out (B, H), h_n (L, B, H), c_n). weights: [w_ih, w_hh, b_ih, b_hh]
    per layer, an empty bias meaning none; c0 is only used by the LSTM."""
    h_n, c_n = h0.clone(), c0.clone()
    for layer in range(len(weights) // 4):
        w_ih, w_hh, b_ih, b_hh = weights[4 * layer:4 * layer + 4]
        xp = torch.nn.functional.linear(x, w_ih, b_ih if b_ih.numel() else None)
        hp = torch.nn.functional.linear(h_n[layer], w_hh, b_hh if b_hh.numel() else None)
        c = c_n[layer] if mode == LSTM else c_n
        x, c, _ = _cell(mode, xp, hp, h_n[layer], c)
        h_n[layer] = x
        if mode == LSTM:
            c_n[layer] = c
    return x, h_n, c_n
