"""fastlm.nn.LSTM / GRU / RNN load torch.nn's state dicts unchanged and match them: outputs, final
states and all gradients; several layers, odd sizes, batch_first both ways, packed variable lengths."""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import fastlm.nn as fnn

PAIRS = [(torch.nn.LSTM, fnn.LSTM, {}), (torch.nn.GRU, fnn.GRU, {}), (torch.nn.RNN, fnn.RNN, {"nonlinearity": "relu"}),
         (torch.nn.RNN, fnn.RNN, {"nonlinearity": "tanh"})]
IDS = ["lstm", "gru", "rnn_relu", "rnn_tanh"]


def _pair(torch_cls, ours_cls, kw, *args, **kwargs):
    ref = torch_cls(*args, **kw, **kwargs)
    ours = ours_cls(*args, **kw, **kwargs)
    ours.load_state_dict(ref.state_dict())  # unchanged: same names and shapes
    return ref, ours


def _states(state):
    return list(state) if isinstance(state, tuple) else [state]


def _check_grads(ref, ours, ref_out, our_out, x_leaves):
    ref_flat = [ref_out[0].data if hasattr(ref_out[0], "batch_sizes") else ref_out[0]] + _states(ref_out[1])
    our_flat = [our_out[0].data if hasattr(our_out[0], "batch_sizes") else our_out[0]] + _states(our_out[1])
    for a, b in zip(our_flat, ref_flat):
        torch.testing.assert_close(a, b, atol=5e-6, rtol=1e-5)
    cot = [torch.randn_like(t) for t in ref_flat]
    ref_g = torch.autograd.grad(ref_flat, x_leaves + list(ref.parameters()), cot, retain_graph=True)
    our_g = torch.autograd.grad(our_flat, x_leaves + list(ours.parameters()), cot)
    for a, b in zip(our_g, ref_g):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("torch_cls,ours_cls,kw", PAIRS, ids=IDS)
@pytest.mark.parametrize("layers,hidden", [(1, 7), (2, 33), (3, 7)])
@pytest.mark.parametrize("batch_first", [False, True])
def test_matches_torch(torch_cls, ours_cls, kw, layers, hidden, batch_first):
    torch.manual_seed(layers * 100 + hidden)
    ref, ours = _pair(torch_cls, ours_cls, kw, 5, hidden, num_layers=layers, batch_first=batch_first)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    x = torch.randn(3, 6, 5, requires_grad=True)  # (B, T) or (T, B)
    h0 = torch.randn(layers, 6 if not batch_first else 3, hidden, requires_grad=True)
    hx = (h0, torch.randn_like(h0).requires_grad_(True)) if torch_cls is torch.nn.LSTM else h0
    leaves = [x] + _states(hx)
    _check_grads(ref, ours, ref(x, hx), ours(x, hx), leaves)


@pytest.mark.parametrize("torch_cls,ours_cls,kw", PAIRS, ids=IDS)
def test_packed_variable_lengths(torch_cls, ours_cls, kw):
    torch.manual_seed(7)
    ref, ours = _pair(torch_cls, ours_cls, kw, 4, 9, num_layers=2)
    seqs = [torch.randn(n, 4, requires_grad=True) for n in (3, 6, 1, 4)]  # unsorted lengths
    packed = pack_sequence(seqs, enforce_sorted=False)
    h0 = torch.randn(2, 4, 9, requires_grad=True)
    hx = (h0, torch.randn_like(h0).requires_grad_(True)) if torch_cls is torch.nn.LSTM else h0
    ours_out = ours(packed, hx)
    assert torch.equal(ours_out[0].batch_sizes, packed.batch_sizes)
    _check_grads(ref, ours, ref(packed, hx), ours_out, seqs + _states(hx))


def test_unbatched_and_default_state():
    torch.manual_seed(8)
    ref, ours = _pair(torch.nn.GRU, fnn.GRU, {}, 3, 5)
    x = torch.randn(4, 3)
    y, h = ref(x)
    o, hn = ours(x)
    torch.testing.assert_close(o, y)
    torch.testing.assert_close(hn, h)


def test_dropout_between_layers_trains_and_evaluates():
    torch.manual_seed(9)
    ref, ours = _pair(torch.nn.LSTM, fnn.LSTM, {}, 4, 6, num_layers=2, dropout=0.5)
    x = torch.randn(5, 2, 4)
    ours.train()
    a, _ = ours(x)
    b, _ = ours(x)
    assert not torch.equal(a, b)  # dropout active in training
    ours.eval()
    ref.eval()
    torch.testing.assert_close(ours(x)[0], ref(x)[0])


def test_bf16_autocast_close():
    torch.manual_seed(10)
    ref, ours = _pair(torch.nn.LSTM, fnn.LSTM, {}, 8, 16, num_layers=2)
    x = torch.randn(6, 3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, (h, c) = ours(x)
    y, _ = ref(x)
    torch.testing.assert_close(o.float(), y, atol=5e-2, rtol=5e-2)
    o.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ours.parameters())


def test_errors():
    with pytest.raises(ValueError, match="bidirectional"):
        fnn.LSTM(3, 4, bidirectional=True)
    with pytest.raises(ValueError, match="nonlinearity"):
        fnn.RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="input_size"):
        fnn.GRU(3, 4)(torch.randn(2, 1, 5))
    with pytest.raises(ValueError, match="hidden state"):
        fnn.GRU(3, 4)(torch.randn(2, 1, 3), torch.randn(2, 1, 4))


@pytest.mark.parametrize("torch_cls,ours_cls,kw", PAIRS, ids=IDS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_single_step_decoding_path_matches_torch(torch_cls, ours_cls, kw, batch_first, bias):
    """Token by token under no_grad (the one-op-call path of the whole stack) equals torch.nn stepwise."""
    torch.manual_seed(11)
    ref, ours = _pair(torch_cls, ours_cls, kw, 6, 33, num_layers=3, batch_first=batch_first, bias=bias)
    ours.eval()
    ref_state = our_state = None
    with torch.no_grad():
        for _ in range(5):
            x = torch.randn(2, 1, 6) if batch_first else torch.randn(1, 2, 6)
            y, ref_state = ref(x, ref_state)
            o, our_state = ours(x, our_state)
            torch.testing.assert_close(o, y, atol=5e-6, rtol=1e-5)
            for a, b in zip(_states(our_state), _states(ref_state)):
                torch.testing.assert_close(a, b, atol=5e-6, rtol=1e-5)


def test_recurrent_step_op_refuses_gradients():
    from fastlm.ops.recurrent import recurrent_step

    m = fnn.GRU(3, 4)
    with pytest.raises(ValueError, match="inference only"):
        recurrent_step(torch.randn(1, 3), list(m.layer_weights(0)), torch.zeros(1, 1, 4), None, "gru")
    with pytest.raises(ValueError, match="mode"):
        recurrent_step(torch.randn(1, 3), list(m.layer_weights(0)), torch.zeros(1, 1, 4), None, "elman")
