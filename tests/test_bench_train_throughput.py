"""train_throughput's MFU: the FLOP count against a hand count, the measured peak, the suite's columns."""
from __future__ import annotations

import pytest
import torch

from fastlm.bench import roofline
from fastlm.bench.registry import Options
from fastlm.bench.suites import train_throughput
from fastlm.models import GPT, GPTConfig

TINY = dict(d_model=8, n_layer=2, n_head=2, n_kv_head=1, vocab_size=32, seq_len=16, batch_size=2)


def _model(**kw):
    cfg = GPTConfig(max_seq_len=16, **kw).resolved()
    return GPT(cfg), cfg


def test_flops_per_token_llama_matches_a_hand_count():
    model, cfg = _model(family="llama", vocab_size=32, n_layer=2, n_head=2, n_kv_head=1, d_model=8, d_ff=16)
    # per layer: qkv (2 q + 1 k + 1 v heads of 4) x 8 = 128, out 8 x 8 = 64, gate|up 32 x 8 = 256,
    # down 8 x 16 = 128 -> 576; two layers 1152; untied LM head 32 x 8 = 256 -> N = 1408
    attention = 12 * 2 * 2 * 4 * 16  # 12 L H Q T
    assert roofline.matmul_params(model) == 1408
    assert roofline.model_flops_per_token(model, cfg, 16) == 6 * 1408 + attention


def test_flops_per_token_counts_a_tied_head_once():
    model, cfg = _model(family="gpt2", vocab_size=32, n_layer=1, n_head=2, d_model=8)
    # qkv 24 x 8, out 8 x 8, fc 32 x 8, proj 8 x 32 = 768; the head (tied to the embedding) 32 x 8 once
    assert roofline.matmul_params(model) == 768 + 256
    assert roofline.model_flops_per_token(model, cfg, 16) == 6 * 1024 + 12 * 1 * 2 * 4 * 16


def test_gemm_shapes_are_forward_and_both_backward_products():
    model, _ = _model(family="gpt2", vocab_size=32, n_layer=1, n_head=2, d_model=8)
    shapes = roofline.gemm_shapes(model, tokens=10)
    # the MLP's fc (8 -> 32): x W^T, dY W, dY^T x
    assert {(10, 8, 32), (10, 32, 8), (32, 10, 8)} <= set(shapes)
    assert len(shapes) == len(set(shapes))


def test_peak_is_the_best_shape(monkeypatch):
    rates = {(1, 2, 3): 5.0, (4, 5, 6): 9.0, (7, 8, 9): 2.0}
    monkeypatch.setattr(roofline, "gemm_gflops", lambda shape, dtype, device, repeats=3: rates[shape])
    assert roofline.peak_gflops(list(rates), torch.float32, torch.device("cpu")) == (9.0, (4, 5, 6))


def test_gemm_gflops_is_positive_and_finite(monkeypatch):
    monkeypatch.setattr(roofline, "MIN_TIME", 0.001)
    for dtype in (torch.float32, torch.bfloat16):
        rate = roofline.gemm_gflops((16, 32, 24), dtype, torch.device("cpu"), repeats=1)
        assert 0 < rate < 1e6


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_run_reports_mfu_against_its_own_peak(monkeypatch, precision):
    monkeypatch.setattr(roofline, "MIN_TIME", 0.001)
    spec = dict(TINY, family="llama", impl="fastlm", precision=precision, warmup=1, steps=1)
    r = train_throughput.run_one(spec)
    assert r["peak_gflops"] > 0
    assert r["mfu"] == pytest.approx(r["tokens_per_s"] * r["flops_per_token"] / (r["peak_gflops"] * 1e9))
    assert tuple(r["peak_shape"]) in roofline.gemm_shapes(*_model(family="llama", vocab_size=32, n_layer=2, n_head=2,
                                                                    n_kv_head=1, d_model=8)[:1], tokens=32)


def test_suite_rows_have_mfu_and_peak_columns(monkeypatch):
    monkeypatch.setattr(roofline, "MIN_TIME", 0.001)
    monkeypatch.setattr(train_throughput, "CPU_SHAPES", {"llama": dict(TINY, family="llama")})
    monkeypatch.setattr(train_throughput, "QUICK_CPU", {})
    monkeypatch.setattr(train_throughput, "spawn", train_throughput.run_one)  # in-process: faster
    rows = train_throughput.measure(Options(quick=True, repeat=1))
    assert [r["precision"] for r in rows] == ["fp32", "bf16"]
    for row in rows:
        assert row["peak_gflops"] > 0 and 0 < row["mfu"]
        assert row["model_gflops"] == pytest.approx(row["mfu"] * row["peak_gflops"])


def test_a_run_uses_the_trainers_adamw_unless_told(monkeypatch):
    """The CPU worker steps with fastlm.optim.AdamW (the trainer's), or torch's with optimizer="torch";
    bf16 runs record how the 16-bit GEMM path was chosen."""
    import fastlm.optim

    monkeypatch.setattr(roofline, "MIN_TIME", 0.001)
    made = []

    def recording(orig):
        def step(self, *args, **kwargs):
            made.append(type(self))
            return orig(self, *args, **kwargs)
        return step

    for cls in (fastlm.optim.AdamW, torch.optim.AdamW):
        monkeypatch.setattr(cls, "step", recording(cls.step))
    spec = dict(TINY, family="llama", impl="fastlm", precision="bf16", warmup=1, steps=1, roofline=False)
    r = train_throughput.run_one(spec)
    assert made and set(made) == {fastlm.optim.AdamW} and r["cpu_gemm16"].split()[0] in ("native", "fp32")
    made.clear()
    train_throughput.run_one(dict(spec, optimizer="torch"))
    assert made and set(made) == {torch.optim.AdamW}
    with pytest.raises(ValueError, match="optimizer must be"):
        train_throughput.run_one(dict(spec, optimizer="sgd"))
