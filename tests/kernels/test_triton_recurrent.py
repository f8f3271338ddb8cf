"""The Triton recurrence (fused per-step gate math) against the plain-torch reference (TRITON_INTERPRET=1)."""
import pytest
import torch

from fastlm.ops import reference_recurrent as reference

pytestmark = pytest.mark.triton
triton_recurrent = pytest.importorskip("fastlm.kernels.recurrent")


@pytest.mark.parametrize("mode", [0, 1, 2, 3], ids=["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("packed", [False, True])
def test_recurrent_fwd_matches_reference(mode, packed):
    torch.manual_seed(mode)
    steps, batch, hidden = 4, 3, 7
    gates = reference.GATES[mode]
    xproj = torch.randn(steps, batch, gates * hidden)
    w = torch.randn(gates * hidden, hidden) * 0.3
    b = torch.randn(gates * hidden) * 0.1
    h0 = torch.randn(batch, hidden)
    c0 = torch.randn(batch, hidden) if mode == 0 else torch.empty(0)
    sizes = torch.tensor([3, 2, 2, 1]) if packed else torch.empty(0, dtype=torch.long)
    want = reference.recurrent_fwd(xproj, w, b, h0, c0, sizes, mode)
    got = triton_recurrent.recurrent_fwd(xproj, w, b, h0, c0, sizes, mode)
    for name, g, r in zip(("out", "h_n", "c_n", "saved"), got, want):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5, msg=name)
