"""fastlm.nn.lora: adapters on GPT and encoder blocks, frozen base, merge."""
from __future__ import annotations

import pytest
import torch

from fastlm.models import GPT, EncoderConfig, EncoderForMaskedLM, GPTConfig
from fastlm.nn.lora import LoRALinear, apply_lora, lora_layers, merge_lora, merge_state_dict


def _gpt(family="llama"):
    torch.manual_seed(0)
    return GPT(GPTConfig(family=family, vocab_size=50, n_layer=2, n_head=4, n_kv_head=2 if family == "llama" else None,
                         d_model=32, max_seq_len=16, dropout=0.0))


def _randomize_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_adapters_start_at_the_base_and_only_they_train(family):
    model = _gpt(family)
    ids = torch.randint(0, 50, (2, 9))
    base = model(ids)
    names = apply_lora(model, rank=4, alpha=8)
    assert names == [f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")]
    torch.testing.assert_close(model(ids), base)  # B = 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{x}" for n in names for x in "AB"}
    _, loss = model(ids, labels=ids)
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    assert all(lora_layers(model)[n].lora_A.grad is not None for n in names)


def test_forward_is_base_plus_scaled_update():
    model = _gpt("gpt2")
    apply_lora(model, rank=3, alpha=6, targets=("mlp",))
    _randomize_adapters(model)
    layer = model.blocks[0].mlp.fc
    assert isinstance(layer, LoRALinear) and not isinstance(model.blocks[0].attn.qkv, LoRALinear)
    x = torch.randn(2, 5, 32)
    want = x @ layer.weight.t() + layer.bias + 2.0 * (x @ layer.lora_A.t()) @ layer.lora_B.t()
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_merged_equals_unmerged(family):
    model = _gpt(family)
    apply_lora(model, rank=4, alpha=16)
    _randomize_adapters(model)
    model.eval()
    ids = torch.randint(0, 50, (2, 11))
    before = model(ids)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    merge_lora(model)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model(ids), before, rtol=1e-5, atol=1e-5)
    plain = _gpt(family)  # the saved-file merge gives the same weights
    plain.load_state_dict(merge_state_dict(state, 16 / 4))
    torch.testing.assert_close(plain.eval()(ids), before, rtol=1e-5, atol=1e-5)


def test_encoder_blocks_are_adapted():
    torch.manual_seed(0)
    model = EncoderForMaskedLM(EncoderConfig(family="bert", vocab_size=40, n_layer=2, n_head=2, d_model=16,
                                             max_seq_len=12, dropout=0.0)).eval()
    ids = torch.randint(5, 40, (2, 7))
    base = model(ids)
    names = apply_lora(model, rank=2, alpha=4, targets=("attn",))
    assert names == [f"encoder.blocks.{i}.attn.{n}" for i in range(2) for n in ("qkv", "proj")]
    torch.testing.assert_close(model(ids), base)
    _randomize_adapters(model)
    out = model(ids)
    assert not torch.allclose(out, base)
    merge_lora(model)
    torch.testing.assert_close(model(ids), out, rtol=1e-5, atol=1e-5)


def test_dropout_touches_only_the_adapter_input():
    model = _gpt("gpt2")
    apply_lora(model, rank=2, alpha=2, dropout=0.5)
    layer = model.blocks[0].attn.proj
    layer.train()
    x = torch.randn(3, 32)
    torch.testing.assert_close(layer(x), x @ layer.weight.t() + layer.bias)  # B = 0: dropout has no effect yet


def test_bad_requests_are_errors():
    model = _gpt()
    with pytest.raises(ValueError, match="unknown LoRA target"):
        apply_lora(model, targets=("embed",))
    with pytest.raises(ValueError, match="rank"):
        apply_lora(model, rank=0)
    apply_lora(model, targets=("attn",))
    with pytest.raises(ValueError, match="already"):
        apply_lora(model, targets=("attn",))
    with pytest.raises(ValueError, match="no Transformer block"):
        apply_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_int8_base_is_the_quantized_weight_plus_adapters(family):
    from fastlm.nn.lora import Int8LoRALinear

    model = _gpt(family)
    apply_lora(model, rank=4, alpha=8, base="int8")
    assert all(isinstance(m, Int8LoRALinear) for m in lora_layers(model).values())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {f"{n}.lora_{x}" for n in lora_layers(model) for x in "AB"}
    _randomize_adapters(model)
    layer = model.blocks[0].attn.qkv
    assert layer.weight.dtype == torch.int8
    x = torch.randn(2, 5, 32, dtype=torch.float64).float().requires_grad_()
    w = layer.dequantized_weight()
    want = x @ w.t() + (layer.bias if layer.bias is not None else 0) + 2.0 * (x @ layer.lora_A.t()) @ layer.lora_B.t()
    got = layer(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(got)
    grads = torch.autograd.grad(got, (x, layer.lora_A, layer.lora_B), g)
    want_grads = torch.autograd.grad(want, (x, layer.lora_A, layer.lora_B), g)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # merged (float) == unmerged (int8 base + adapters), also through the saved tensors
    model.eval()
    ids = torch.randint(0, 50, (2, 7))
    before = model(ids)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    plain = _gpt(family)
    plain.load_state_dict(merge_state_dict(state, 2.0))
    torch.testing.assert_close(plain.eval()(ids), before, rtol=1e-4, atol=1e-5)
    merge_lora(model)
    torch.testing.assert_close(model(ids), before, rtol=1e-4, atol=1e-5)


def test_int8_base_close_to_the_float_base():
    model = _gpt("llama").eval()
    ids = torch.randint(0, 50, (2, 9))
    ref = model(ids)
    apply_lora(model, base="int8")
    rel = (model(ids) - ref).norm() / ref.norm()
    assert 0 < rel < 0.02
