"""fastlm.ops.lstm / gru / rnn against torch.nn.LSTM / GRU / RNN (cuDNN/oneDNN-independent math) and
against the plain-torch reference in float64: outputs, final states and every gradient."""
from __future__ import annotations

import pytest
import torch

import fastlm.ops as ops
from fastlm.ops import reference_recurrent as reference
from fastlm.ops._library import has_native_op

CASES = [("lstm", torch.nn.LSTM, {}), ("gru", torch.nn.GRU, {}), ("rnn_tanh", torch.nn.RNN, {"nonlinearity": "tanh"}),
         ("rnn_relu", torch.nn.RNN, {"nonlinearity": "relu"})]


def _run_op(kind: str, x, ws, h0, c0, batch_sizes=None):
    if kind == "lstm":
        return ops.lstm(x, *ws, h0, c0, batch_sizes)
    if kind == "gru":
        return ops.gru(x, *ws, h0, batch_sizes)
    return ops.rnn(x, *ws, h0, batch_sizes, nonlinearity=kind.split("_")[1])


def test_native_kernels_are_registered():
    assert has_native_op("recurrent_fwd") and has_native_op("recurrent_bwd")


@pytest.mark.parametrize("kind,cls,kw", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("hidden,inp,steps,batch", [(7, 5, 6, 3), (33, 17, 9, 4), (16, 16, 1, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_nn(kind, cls, kw, hidden, inp, steps, batch, bias):
    torch.manual_seed(hidden + steps)
    m = cls(inp, hidden, bias=bias, **kw)
    x = torch.randn(steps, batch, inp, requires_grad=True)
    h0 = torch.randn(1, batch, hidden, requires_grad=True)
    c0 = torch.randn(1, batch, hidden, requires_grad=True)
    ws = [m.weight_ih_l0, m.weight_hh_l0] + ([m.bias_ih_l0, m.bias_hh_l0] if bias else [None, None])
    y, state = m(x, (h0, c0) if kind == "lstm" else h0)
    ref_states = list(state) if kind == "lstm" else [state]
    got = _run_op(kind, x, ws, h0[0], c0[0])
    torch.testing.assert_close(got[0], y, atol=2e-6, rtol=1e-5)
    for g, r in zip(got[1:], ref_states):
        torch.testing.assert_close(g, r[0], atol=2e-6, rtol=1e-5)
    leaves = [x, h0] + ([c0] if kind == "lstm" else []) + [w for w in ws if w is not None]
    cotangents = [torch.randn_like(y)] + [torch.randn_like(s) for s in ref_states]
    expected = torch.autograd.grad([y] + ref_states, leaves, cotangents)
    actual = torch.autograd.grad(list(got), leaves, [cotangents[0]] + [c[0] for c in cotangents[1:]])
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_packed_batch_sizes_match_float64_reference(kind):
    """The C++ kernel with per-step active rows equals the float64 reference (values and gradients)."""
    torch.manual_seed(1)
    gates = {"lstm": 4, "gru": 3}.get(kind, 1)
    steps, batch, hidden = 5, 4, 9
    mode = reference.MODES[kind]
    sizes = torch.tensor([4, 3, 3, 1, 1])
    xproj = torch.randn(steps, batch, gates * hidden, dtype=torch.float64)
    w = torch.randn(gates * hidden, hidden, dtype=torch.float64) * 0.3
    b = torch.randn(gates * hidden, dtype=torch.float64) * 0.1
    h0 = torch.randn(batch, hidden, dtype=torch.float64)
    c0 = torch.randn(batch, hidden, dtype=torch.float64) if kind == "lstm" else torch.empty(0, dtype=torch.float64)
    ref = reference.recurrent_fwd(xproj, w, b, h0, c0, sizes, mode)
    f32 = [t.float() for t in (xproj, w, b, h0, c0)]
    got = torch.ops.fastlm.recurrent_fwd(*f32, sizes, mode)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g.double(), r, atol=1e-5, rtol=1e-5)
    assert float(got[0][3:, 1:].abs().max()) == 0.0  # inactive rows output zeros
    grads = [torch.randn_like(ref[0]), torch.randn_like(h0), torch.randn_like(c0)]
    ref_g = reference.recurrent_bwd(*grads, xproj, w, b, h0, c0, ref[0], ref[3], sizes, mode)
    got_g = torch.ops.fastlm.recurrent_bwd(*[g.float() for g in grads], *f32[:4], f32[4], got[0], got[3], sizes, mode)
    for g, r in zip(got_g, ref_g):
        torch.testing.assert_close(g.double(), r, atol=1e-4, rtol=1e-4)


def test_float64_uses_reference_and_matches_torch():
    torch.manual_seed(2)
    m = torch.nn.GRU(4, 6).double()
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    y, h = m(x)
    out, h_n = ops.gru(x, m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
    torch.testing.assert_close(out, y)
    torch.testing.assert_close(h_n, h[0])


def test_bf16_autocast_is_close():
    torch.manual_seed(3)
    m = torch.nn.LSTM(8, 12)
    x = torch.randn(5, 2, 8)
    y, _ = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h, c = ops.lstm(x, m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), y, atol=3e-2, rtol=3e-2)


def test_bad_inputs_name_the_problem():
    w_ih, w_hh = torch.randn(28, 5), torch.randn(28, 7)
    with pytest.raises(ValueError, match="w_hh"):
        ops.lstm(torch.randn(3, 2, 5), w_ih, torch.randn(27, 7))
    with pytest.raises(ValueError, match="w_ih"):
        ops.lstm(torch.randn(3, 2, 6), w_ih, w_hh)
    with pytest.raises(ValueError, match="non-increasing"):
        ops.lstm(torch.randn(3, 2, 5), w_ih, w_hh, batch_sizes=torch.tensor([1, 2, 2]))
    with pytest.raises(ValueError, match="nonlinearity"):
        ops.rnn(torch.randn(3, 2, 5), torch.randn(7, 5), torch.randn(7, 7), nonlinearity="gelu")


FALLBACK_SCRIPT = r"""
import sys, importlib.abc, warnings
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "fastlm._C":
            raise ImportError("blocked for the test")
sys.meta_path.insert(0, Block())
warnings.simplefilter("ignore")
import torch, fastlm._native as native
import fastlm.nn as fnn
assert not native.AVAILABLE
for cls, ours_cls in ((torch.nn.LSTM, fnn.LSTM), (torch.nn.GRU, fnn.GRU), (torch.nn.RNN, fnn.RNN)):
    ref, ours = cls(5, 7, num_layers=2), ours_cls(5, 7, num_layers=2)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 5, requires_grad=True)
    y, o = ref(x)[0], ours(x)[0]
    torch.testing.assert_close(o, y)
    for a, b in zip(torch.autograd.grad(o.sum(), [x, *ours.parameters()]),
                    torch.autograd.grad(y.sum(), [x, *ref.parameters()])):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(ours(x[:1])[0], ref(x[:1])[0])
print("fallback ok")
"""


def test_plain_torch_fallback_without_the_extension():
    """Without fastlm._C the ops fall back to the reference (forward, backward and the decoding step)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "FASTLM_REQUIRE_NATIVE": "0"}
    r = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "fallback ok" in r.stdout
