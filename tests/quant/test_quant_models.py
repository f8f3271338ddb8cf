"""Quantizing a model the trainer trained: the issue's accuracy targets on validation perplexity.

- post-training w8a16 within 2% and w8a8 within 5% of the fp32 model's perplexity;
- QAT (fine-tuning the trained model with fake quantization) then convert: within 1% of the QAT model;
- int8 (SwitchBack) training reaches a validation loss within 3% of bf16 training.

`fast` runs a small model on the pydoc-topics corpus in the default suite; `tiny` (slow) is the tiny
preset itself, trained for a few hundred steps on the whole built-in corpus.
"""
from __future__ import annotations

import copy
import math
from contextlib import nullcontext

import pytest
import torch

from fastlm.quant import convert, prepare_qat, quantize_model

SIZES = {
    # A 2-layer d_model=64 LLaMA on the pydoc topics: about 10-20 s per run on a busy core.
    "fast": ["model.n_layer=2", "model.n_head=4", "model.n_kv_head=2", "model.d_model=64",
             "data.vocab_size=320", "data.seq_len=64", "data.builtin_modules=[]",
             "train.steps=120", "train.global_batch_size=8", "train.micro_batch_size=8",
             "train.warmup_steps=10", "train.eval_batches=4"],
    # The tiny preset (4 layers, d_model 128, the whole built-in corpus), 300 of its 500 steps.
    "tiny": ["train.steps=300", "train.warmup_steps=30"],
}
COMMON = ["train.eval_every=0", "checkpoint.every=0", "train.log_every=20"]
PARAMS = [pytest.param("fast"), pytest.param("tiny", marks=pytest.mark.slow)]


def train(tmp_path_factory, size: str, *extra: str):
    from fastlm.train import Trainer, load_config

    out = tmp_path_factory.mktemp(f"quant-{size}") / "run"
    config = load_config("tiny", [*SIZES[size], *COMMON, *extra])
    summary = Trainer(config, out_dir=out, show_progress=False).fit()
    return out, summary


def perplexity(model, batches) -> float:
    from fastlm.train.evaluate import evaluate

    return evaluate(model, batches, torch.device("cpu"), nullcontext())["val_ppl"]


@pytest.fixture(scope="module", params=PARAMS)
def trained(request, tmp_path_factory):
    """(fp32 model, its validation batches, training batches) of a finished fp32 run."""
    from fastlm.data import eval_batches, prepare_corpus
    from fastlm.train.run import load_run

    run_dir, summary = train(tmp_path_factory, request.param, "train.precision=fp32")
    config, model, tokenizer = load_run(run_dir)
    d, t = config.data, config.train
    corpus = prepare_corpus(d.source, tokenizer_path=tokenizer, val_fraction=d.val_fraction,
                            builtin_modules=d.builtin_modules, show_progress=False)
    val = eval_batches(corpus.val_tokens, seq_len=d.seq_len, batch_size=t.micro_batch_size,
                       num_batches=t.eval_batches)
    train_batches = eval_batches(corpus.train_tokens, seq_len=d.seq_len, batch_size=t.micro_batch_size,
                                 num_batches=40)
    assert perplexity(model, val) == pytest.approx(summary["val_ppl"], rel=1e-4)
    return model, val, train_batches


def test_post_training_quantization(trained):
    model, val, train_batches = trained
    base = perplexity(model, val)
    results = {}
    for name, kwargs in {"w8a16": dict(scheme="w8a16"), "w8a8": dict(scheme="w8a8"),
                         "w8a8+smooth": dict(scheme="w8a8", smooth=0.5, calibration_batches=train_batches[:4])}.items():
        results[name] = perplexity(quantize_model(copy.deepcopy(model), **kwargs), val)
    print(f"fp32 ppl {base:.3f}; " + ", ".join(f"{k} {v:.3f} ({v / base - 1:+.2%})" for k, v in results.items()))
    assert abs(results["w8a16"] / base - 1) < 0.02
    assert abs(results["w8a8"] / base - 1) < 0.05
    assert abs(results["w8a8+smooth"] / base - 1) < 0.05


def test_qat_then_convert(trained):
    model, val, train_batches = trained
    model = prepare_qat(copy.deepcopy(model), "w8a8")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
    model.train()
    for x in train_batches[:20]:  # a short fine-tuning with fake quantization
        _, loss = model(x, labels=x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert math.isfinite(loss.item())
    qat_ppl = perplexity(model, val)
    int8_ppl = perplexity(convert(model), val)
    print(f"QAT (fake quant) ppl {qat_ppl:.4f}, converted int8 ppl {int8_ppl:.4f}")
    assert abs(int8_ppl / qat_ppl - 1) < 0.01


@pytest.mark.parametrize("size", PARAMS)
def test_int8_training_matches_bf16_training(tmp_path_factory, size):
    _, bf16 = train(tmp_path_factory, size, "train.precision=bf16")
    _, int8 = train(tmp_path_factory, size, "train.precision=bf16", "model.linear=int8_train")
    print(f"val loss: bf16 {bf16['val_loss']:.4f}, int8 training {int8['val_loss']:.4f}")
    assert int8["val_loss"] < 0.9 * math.log(320 if size == "fast" else 4096)  # both learned
    assert abs(int8["val_loss"] / bf16["val_loss"] - 1) < 0.03
