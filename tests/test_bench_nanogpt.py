"""The nanoGPT baseline is the same model as fastlm's GPT-2: same logits, loss and gradients from the
same weights, so that benchmarks/nanogpt_compare.py compares implementations, not architectures."""
from __future__ import annotations

import pytest
import torch

from fastlm.bench import nanogpt
from fastlm.bench.suites import train_throughput
from fastlm.models import GPT, GPTConfig


def _fastlm(**kw):
    args = dict(family="gpt2", vocab_size=61, n_layer=2, n_head=3, d_model=24, max_seq_len=11, activation="gelu")
    cfg = GPTConfig(**dict(args, **kw)).resolved()
    torch.manual_seed(0)
    return GPT(cfg), cfg


@pytest.mark.parametrize("bias", [True, False])
def test_same_weights_give_the_same_logits_loss_and_gradients(bias):
    model, cfg = _fastlm(bias=bias)
    baseline = nanogpt.from_fastlm(model, cfg)
    x = torch.randint(0, cfg.vocab_size, (3, 11), generator=torch.Generator().manual_seed(1))
    logits, loss = model(x, labels=x)[:2]
    ref_logits, ref_loss = baseline(x, labels=x)
    torch.testing.assert_close(ref_logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref_loss, loss, atol=1e-6, rtol=1e-6)
    loss.backward()
    ref_loss.backward()
    ours = dict(model.named_parameters())
    for name, p in baseline.named_parameters():
        torch.testing.assert_close(p.grad, ours[name].grad, atol=1e-5, rtol=1e-4, msg=name)


def test_other_architectures_are_refused_by_name():
    model, cfg = _fastlm(activation="gelu_new")
    with pytest.raises(ValueError, match="activation"):
        nanogpt.from_fastlm(model, cfg)
    model, cfg = _fastlm(family="llama")
    with pytest.raises(ValueError, match="family"):
        nanogpt.from_fastlm(model, cfg)


def test_optimizer_decays_matrices_only():
    model, cfg = _fastlm()
    opt = nanogpt.configure_optimizer(nanogpt.from_fastlm(model, cfg), lr=1e-3, weight_decay=0.1, device_type="cpu")
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.dim() == 1 for p in plain["params"])
    assert opt.defaults["betas"] == (0.9, 0.95) and not opt.defaults["fused"]


@pytest.mark.parametrize("impl,optimizer", [("nanogpt", None), ("fastlm", "trainer")])
def test_worker_trains_each_run_from_the_same_start(impl, optimizer):
    spec = dict(family="gpt2", activation="gelu", d_model=16, n_layer=1, n_head=2, vocab_size=32, seq_len=8,
                batch_size=2, impl=impl, optimizer=optimizer, precision="fp32", warmup=1, steps=2, roofline=False)
    r = train_throughput.run_one(spec)
    reference = train_throughput.run_one(dict(spec, impl="fastlm", optimizer="torch"))
    assert r["tokens_per_s"] > 0
    assert r["first_loss"] == pytest.approx(reference["first_loss"], rel=1e-5)  # same weights and batch
