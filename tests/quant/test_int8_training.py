"""SwitchBack int8 training: gradients against float64, the model transform, the config switch."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fastlm.models import GPT, GPTConfig
from fastlm.quant import Int8TrainLinear, apply_int8_training


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 33, 17), (64, 128, 96)])
@pytest.mark.parametrize("bias", [True, False])
def test_gradients_against_float64(m, k, n, bias):
    linear = nn.Linear(k, n, bias=bias)
    fast = Int8TrainLinear.from_linear(linear)
    x = torch.randn(2, m, k, requires_grad=True)
    y = fast(x)
    g = torch.randn_like(y)
    y.backward(g)

    x64, w64 = x.detach().double(), linear.weight.detach().double()
    y64 = x64 @ w64.t() + (linear.bias.detach().double() if bias else 0)
    g64 = g.double().reshape(-1, n)
    # int8 forward and input gradient: per-token / per-channel rounding, error ~ 1/127 relative.
    assert rel(y, y64) < 0.02
    assert rel(x.grad, (g64 @ w64).reshape(x.shape)) < 0.02
    # The weight gradient is not quantized: float32 accuracy.
    assert rel(linear.weight.grad, g64.t() @ x64.reshape(-1, k)) < 1e-5
    if bias:
        assert rel(linear.bias.grad, g64.sum(0)) < 1e-5


def test_bf16_autocast():
    linear = nn.Linear(64, 32)
    fast = Int8TrainLinear.from_linear(linear)
    x = torch.randn(16, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fast(x)
    assert y.dtype == torch.bfloat16
    g = torch.randn_like(y)
    y.backward(g)
    assert x.grad.dtype == torch.float32 and linear.weight.grad.dtype == torch.float32
    w = linear.weight.detach().double()
    assert rel(y, x.detach().double() @ w.t() + linear.bias.detach().double()) < 0.03
    assert rel(x.grad, g.double() @ w) < 0.03
    assert rel(linear.weight.grad, g.double().t() @ x.detach().double()) < 0.01  # a 16-bit GEMM


def test_apply_keeps_parameters_and_state_dict():
    model = GPT(GPTConfig(family="gpt2", vocab_size=64, n_layer=2, n_head=4, d_model=32, max_seq_len=16))
    params = [id(p) for p in model.parameters()]
    keys = list(model.state_dict())
    assert apply_int8_training(model) is model
    assert [id(p) for p in model.parameters()] == params and list(model.state_dict()) == keys
    kinds = {n: type(m) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert kinds.pop("lm_head") is not Int8TrainLinear  # the head trains in full precision by default
    assert set(kinds.values()) == {Int8TrainLinear} and len(kinds) == 8
    assert model.lm_head.weight is model.tok_emb.weight
    ids = torch.randint(0, 64, (2, 16))
    _, loss = model(ids, labels=ids)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    apply_int8_training(model)  # again: nothing changes
    with pytest.raises(ValueError, match="nothing to train in int8"):
        apply_int8_training(nn.Sequential(nn.Tanh()))


def test_config_switch(finished_int8_run):
    from fastlm.train import load_config
    from fastlm.train.errors import ConfigError

    with pytest.raises(ConfigError, match='model.linear = "int4": expected one of default, int8_train'):
        load_config("tiny", ["model.linear=int4"])
    run_dir, summary, first_val = finished_int8_run
    assert summary["val_loss"] < first_val  # it learned
    from fastlm.train.evaluate import evaluate_run
    from fastlm.train.run import load_run

    _, model, _ = load_run(run_dir)
    assert isinstance(model.blocks[0].attn.qkv, Int8TrainLinear)  # evaluated as it trained
    assert evaluate_run(run_dir)["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-5)


@pytest.fixture(scope="module")
def finished_int8_run(tmp_path_factory):
    from fastlm.train import Trainer
    from fastlm.train.metrics import read_metrics
    from tests.train.train_helpers import micro_config

    out = tmp_path_factory.mktemp("int8-run") / "micro"
    summary = Trainer(micro_config("model.linear=int8_train", "model.dropout=0.0", "train.steps=10"),
                      out_dir=out, show_progress=False).fit()
    first = next(r["val_loss"] for r in read_metrics(out) if "val_loss" in r)
    return out, summary, first
