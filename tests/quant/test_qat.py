"""QAT: fake quantization with a straight-through estimator, then convert to real int8 layers."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastlm.models import GPT, GPTConfig
from fastlm.quant import FakeQuantLinear, Int8Linear, convert, prepare_qat
from fastlm.quant.qat import fake_quantize_per_channel, fake_quantize_per_token


def test_fake_quantization_values_and_straight_through_gradient():
    x = torch.randn(5, 33, requires_grad=True)
    xq = fake_quantize_per_token(x)
    scale = x.detach().abs().amax(dim=1, keepdim=True) / 127
    assert torch.allclose(xq, torch.round(x.detach() / scale) * scale, rtol=0, atol=1e-6)
    g = torch.randn_like(x)
    xq.backward(g)
    assert torch.equal(x.grad, g)  # identity through the rounding

    w = torch.randn(7, 32, requires_grad=True)
    for group_size in (None, 8):
        wq = fake_quantize_per_channel(w, group_size)
        groups = w.detach().reshape(7, -1, group_size or 32)
        scale = groups.abs().amax(dim=-1, keepdim=True) / 127
        assert torch.allclose(wq, (torch.round(groups / scale) * scale).reshape(7, 32), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scheme", ["w8a8", "w8a16"])
def test_fake_linear_gradient_is_that_of_the_quantized_product(scheme):
    linear = nn.Linear(32, 16)
    fake = FakeQuantLinear.from_linear(linear, scheme)
    assert fake.weight is linear.weight and fake.bias is linear.bias
    x = torch.randn(4, 32, requires_grad=True)
    y = fake(x)
    g = torch.randn_like(y)
    y.backward(g)
    xq = fake_quantize_per_token(x.detach()) if scheme == "w8a8" else x.detach()
    wq = fake_quantize_per_channel(linear.weight.detach())
    assert torch.allclose(y, F.linear(xq, wq, linear.bias), atol=1e-5)
    assert torch.allclose(x.grad, g @ wq, atol=1e-5)
    assert torch.allclose(linear.weight.grad, g.t() @ xq, atol=1e-5)


def tiny_gpt(family="llama"):
    return GPT(GPTConfig(family=family, vocab_size=96, n_layer=2, n_head=4, d_model=32, max_seq_len=32))


@pytest.mark.parametrize("family,scheme", [("llama", "w8a8"), ("gpt2", "w8a8"), ("llama", "w8a16")])
def test_train_then_convert_matches_the_fake_quantized_model(family, scheme):
    model = tiny_gpt(family)
    params = {id(p) for p in model.parameters()}
    prepare_qat(model, scheme)
    assert {id(p) for p in model.parameters()} == params  # build the optimizer before or after: same tensors
    assert all(isinstance(m, FakeQuantLinear) for m in model.modules() if isinstance(m, nn.Linear))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.randint(0, 96, (8, 4, 32))
    losses = []
    for step in range(8):
        _, loss = model(data[step % 2], labels=data[step % 2])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # it trains through the fake quantization

    ids = data[5]
    model.eval()
    with torch.no_grad():
        fake_logits, fake_loss = model(ids, labels=ids)
    emb = model.tok_emb.weight.detach().clone()
    assert convert(model) is model
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    with torch.no_grad():
        logits, loss = model(ids, labels=ids)
    # Same integers, same scales: only float rounding differs, which can move an activation that sits
    # on a rounding boundary by one int8 step (and the tokens after it a little).
    diff, top = (logits - fake_logits).abs(), fake_logits.abs().max()
    assert (diff > 1e-4 * top).float().mean() < 0.01 and diff.max() < 0.02 * top
    assert abs(loss.item() - fake_loss.item()) < 1e-3 * fake_loss.item()
    assert torch.equal(model.tok_emb.weight, emb)  # the gpt2 head was tied: the embedding survives


def test_skip_and_errors():
    model = tiny_gpt()
    prepare_qat(model, skip=["lm_head"])
    assert type(model.lm_head) is not FakeQuantLinear and isinstance(model.blocks[0].mlp.fc, FakeQuantLinear)
    with pytest.raises(ValueError, match="prepared already"):
        prepare_qat(model, skip=["lm_head"])
    convert(model)
    assert isinstance(model.blocks[0].mlp.fc, Int8Linear) and not isinstance(model.lm_head, Int8Linear)
    with pytest.raises(ValueError, match="no FakeQuantLinear modules .*prepare_qat first"):
        convert(tiny_gpt())
    with pytest.raises(ValueError, match="unknown quantization scheme"):
        prepare_qat(tiny_gpt(), "fp8")
    with pytest.raises(ValueError, match="nothing to prepare for QAT"):
        prepare_qat(nn.Sequential(nn.ReLU()))
