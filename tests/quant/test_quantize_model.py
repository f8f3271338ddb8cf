"""quantize_model: which modules it replaces (skip, nesting, tied head), SmoothQuant, errors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fastlm.models import GPT, GPTConfig
from fastlm.nn import LayerNorm, RMSNorm
from fastlm.quant import Int8Linear, quantization_record, quantize_model, restore_quantized


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.proj(x))


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), Inner()) for _ in range(2)])
        self.heads = nn.ModuleDict({"a": nn.Linear(8, 4), "b": nn.Linear(8, 4, bias=False)})

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.heads["a"](x) + self.heads["b"](x)


def linear_names(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear))


def int8_names(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, Int8Linear))


@pytest.mark.parametrize("skip,kept", [
    ([], []),
    (["heads.b"], ["heads.b"]),                                  # an exact name
    (["*.proj"], ["blocks.0.1.proj", "blocks.1.1.proj"]),        # a pattern
    (["blocks.0"], ["blocks.0.0", "blocks.0.1.proj"]),           # a container: everything inside it
    ("heads.a", ["heads.a"]),                                    # one name as a string
])
def test_replaces_exactly_the_linears_not_skipped(skip, kept):
    model = Nested()
    all_linears = linear_names(model)
    x = torch.randn(5, 8)
    ref = model(x)
    assert quantize_model(model, "w8a8", skip=skip) is model
    assert linear_names(model) == sorted(kept)
    assert int8_names(model) == sorted(set(all_linears) - set(kept))
    assert torch.allclose(model(x), ref, atol=0.05 * ref.abs().max().item())


def gpt(family, **kw):
    return GPT(GPTConfig(family=family, vocab_size=64, n_layer=2, n_head=4, d_model=32, max_seq_len=16, **kw))


@pytest.mark.parametrize("scheme", ["w8a8", "w8a16"])
def test_gpt2_tied_head_keeps_the_embedding(scheme):
    model = gpt("gpt2")
    assert model.lm_head.weight is model.tok_emb.weight
    emb = model.tok_emb.weight.detach().clone()
    ids = torch.randint(0, 64, (2, 16))
    ref = model(ids)
    quantize_model(model, scheme)
    assert isinstance(model.lm_head, Int8Linear)
    assert isinstance(model.tok_emb.weight, nn.Parameter) and torch.equal(model.tok_emb.weight, emb)
    assert len(int8_names(model)) == 4 * 2 + 1 and not linear_names(model)
    out = model(ids)
    assert out.dtype == ref.dtype
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_llama_every_linear_and_record_round_trip(tmp_path):
    import safetensors.torch

    model = gpt("llama")
    ids = torch.randint(0, 64, (2, 16))
    quantize_model(model, "w8a16", skip=["lm_head"], group_size=8)
    record = quantization_record(model)
    assert sorted(record["modules"]) == int8_names(model) and "lm_head" not in record["modules"]
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_model(model, str(path))
    fresh = restore_quantized(gpt("llama"), record)
    safetensors.torch.load_model(fresh, str(path), strict=True)
    assert torch.equal(fresh(ids), model(ids))


# ---------------------------------------------------------------- SmoothQuant

class NormThenLinear(nn.Module):
    """norm -> fc (foldable) -> proj (no norm before it: the scale stays in the layer)."""

    def __init__(self, norm_cls, d=64):
        super().__init__()
        self.norm = norm_cls(d)
        self.fc = nn.Linear(d, d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        h = self.fc(self.norm(x))
        return self.proj(h)


def outlier_model(norm_cls):
    torch.manual_seed(0)
    model = NormThenLinear(norm_cls)
    with torch.no_grad():
        model.norm.weight[:3] = 100.0         # a few activation channels 100x larger (LLM.int8 style)
        model.fc.weight[:, 5:8] *= 0.05
        model.fc.bias.zero_()
        model.fc.bias[10:13] = 80.0           # outliers in proj's input too
    return model


@pytest.mark.parametrize("norm_cls", [LayerNorm, RMSNorm, nn.LayerNorm])
def test_smoothing_reduces_the_error_of_outlier_channels(norm_cls):
    x = torch.randn(4, 32, 64)
    calibration = [torch.randn(4, 32, 64) for _ in range(3)]
    ref = outlier_model(norm_cls)(x)

    def error(**kw):
        model = quantize_model(outlier_model(norm_cls), "w8a8", **kw)
        return ((model(x) - ref).norm() / ref.norm()).item(), model

    plain, _ = error()
    smoothed, model = error(smooth=0.5, calibration_batches=calibration)
    assert smoothed < 0.6 * plain, (smoothed, plain)
    # fc reads the norm's output: folded into the norm. proj has no norm before it: kept in the layer.
    assert model.fc.smooth_scale is None and model.proj.smooth_scale is not None
    assert model.norm.weight[:3].max() < 100.0


def test_smoothing_alpha_zero_and_one_are_valid_and_shared_inputs_share_a_scale():
    class QKV(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = RMSNorm(32)
            self.q, self.k = nn.Linear(32, 16), nn.Linear(32, 16)

        def forward(self, x):
            h = self.norm(x)
            return self.q(h) * self.k(h)

    x = torch.randn(2, 8, 32)
    for alpha in (0, 1, 0.5):
        torch.manual_seed(1)
        model = QKV()
        ref = model(x)
        quantize_model(model, "w8a8", smooth=alpha, calibration_batches=[x])
        assert model.q.smooth_scale is None and model.k.smooth_scale is None  # both folded into one norm
        assert torch.allclose(model(x), ref, atol=0.1 * ref.abs().max().item())


def test_a_norm_feeding_a_skipped_linear_is_not_folded():
    model = outlier_model(LayerNorm)
    norm_weight = model.norm.weight.detach().clone()
    quantize_model(model, "w8a8", skip=["proj"], smooth=0.5, calibration_batches=[torch.randn(2, 4, 64)])
    assert model.fc.smooth_scale is None and not torch.equal(model.norm.weight, norm_weight)

    class TwoReaders(NormThenLinear):
        def forward(self, x):
            h = self.norm(x)
            return self.fc(h) + self.proj(h)

    torch.manual_seed(0)
    model = TwoReaders(LayerNorm)
    norm_weight = model.norm.weight.detach().clone()
    quantize_model(model, "w8a8", skip=["proj"], smooth=0.5, calibration_batches=[torch.randn(2, 4, 64)])
    assert torch.equal(model.norm.weight, norm_weight)  # proj (full precision) reads it too
    assert model.fc.smooth_scale is not None


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_smoothing_a_gpt_keeps_its_outputs(family):
    model = gpt(family)
    emb = model.tok_emb.weight.detach().clone()
    batches = [torch.randint(0, 64, (2, 16)) for _ in range(2)]
    ids = torch.randint(0, 64, (2, 16))
    ref = model(ids)
    quantize_model(model, "w8a8", smooth=0.5, calibration_batches=batches)
    assert torch.equal(model.tok_emb.weight, emb)  # gpt2: the head's smoothing did not touch the tied embedding
    folded = [n for n, m in model.named_modules() if isinstance(m, Int8Linear) and m.smooth_scale is None]
    assert sorted(folded) == ["blocks.0.attn.qkv", "blocks.0.mlp.fc", "blocks.1.attn.qkv", "blocks.1.mlp.fc",
                              "lm_head"]
    assert (model(ids) - ref).abs().max() < 0.05 * ref.abs().max()


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs,message", [
    (dict(scheme="int4"), "unknown quantization scheme 'int4'"),
    (dict(scheme="w8a8", skip=["heads.c"]), "skip: 'heads.c' match"),
    (dict(scheme="w8a8", skip=["*"]), "nothing to quantize: every Linear module is skipped"),
    (dict(scheme="w8a8", smooth=1.5, calibration_batches=[torch.randn(2, 8)]), r"smooth = 1.5: expected .* \[0, 1\]"),
    (dict(scheme="w8a8", smooth=-0.1, calibration_batches=[torch.randn(2, 8)]), "smooth = -0.1"),
    (dict(scheme="w8a8", smooth=math.nan, calibration_batches=[torch.randn(2, 8)]), "smooth = nan"),
    (dict(scheme="w8a8", smooth=True, calibration_batches=[torch.randn(2, 8)]), "smooth = True"),
    (dict(scheme="w8a8", smooth=0.5), "smoothing needs calibration_batches"),
    (dict(scheme="w8a8", smooth=0.5, calibration_batches=[]), "calibration_batches is empty"),
    (dict(scheme="w8a16", smooth=0.5, calibration_batches=[torch.randn(2, 8)]), "scheme 'w8a8' only"),
    (dict(scheme="w8a8", group_size=4), "group_size = 4: only available with scheme 'w8a16'"),
    (dict(scheme="w8a16", group_size=3), "positive divisor"),
])
def test_bad_arguments_leave_the_model_unchanged(kwargs, message):
    model = Nested()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        quantize_model(model, **kwargs)
    assert linear_names(model) == linear_names(Nested()) and not int8_names(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_model_with_nothing_to_quantize():
    with pytest.raises(ValueError, match="nothing to quantize: the model .* has no Linear modules"):
        quantize_model(nn.Sequential(nn.ReLU(), nn.LayerNorm(4)), "w8a8")
    model = quantize_model(Nested(), "w8a16")
    with pytest.raises(ValueError, match="nothing to quantize"):
        quantize_model(model, "w8a16")  # quantized already
