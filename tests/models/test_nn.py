"""fastlm.nn building blocks against plain-torch formulations."""
from __future__ import annotations

import torch

from fastlm.models import GPT, GPTConfig
from fastlm.nn import MLP, apply_rope, rope_cos_sin, rotate_half


def test_rope_matches_rotate_half_formula_and_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64)  # (B, T, H, D)
    cos, sin = rope_cos_sin(torch.arange(3, 8), 8, 10000.0)
    full_cos = torch.cat([cos, cos], -1).double()[:, None]
    full_sin = torch.cat([sin, sin], -1).double()[:, None]
    ref = x * full_cos + rotate_half(x) * full_sin
    torch.testing.assert_close(apply_rope(x, cos.double(), sin.double()), ref)
    # non-contiguous input (a slice of a fused projection) and the custom backward
    xs = torch.randn(2, 5, 3, 16, dtype=torch.float64)[..., 4:12].requires_grad_()
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos.double(), sin.double()), (xs,))


def test_swiglu_mlp_matches_formula():
    torch.manual_seed(0)
    mlp = MLP(8, 12, "silu", gated=True, bias=False)
    x = torch.randn(3, 8)
    gate_w, up_w = mlp.fc.weight.chunk(2, 0)
    ref = (torch.nn.functional.silu(x @ gate_w.T) * (x @ up_w.T)) @ mlp.proj.weight.T
    torch.testing.assert_close(mlp(x), ref)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    cfg = GPTConfig(family="llama", vocab_size=50, n_layer=2, n_head=4, d_model=32, max_seq_len=16, dropout=0.2)
    model = GPT(cfg)
    plain = GPT(GPTConfig(**{**cfg.to_dict(), "dropout": 0.0}))
    plain.load_state_dict(model.state_dict())
    x = torch.randint(0, 50, (2, 12))
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), plain.eval()(x))
