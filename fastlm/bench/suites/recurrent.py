"""Recurrent layers: fastlm.nn.LSTM / GRU (fused C++ recurrence) against torch.nn.LSTM / GRU (oneDNN on
CPU, cuDNN on CUDA) with the same weights, in the same run.

Two measurements per family and shape:
  train   tokens/s of forward + backward over a (T, B, H) batch (all gradients: inputs and weights);
  infer   batch 1, token by token with the carried state (what generation does), microseconds per token.
Columns `fastlm` and `torch` are in `unit` (tokens/s for train, microseconds per token for infer);
`speedup` = torch's time / fastlm's (>1: fastlm faster); `threads` is torch.get_num_threads().
"""
from __future__ import annotations

import torch

import fastlm.nn as fnn
from fastlm.bench.registry import Options, Suite
from fastlm.bench.timing import compare, time_callable

PAIRS = {"lstm": (torch.nn.LSTM, fnn.LSTM), "gru": (torch.nn.GRU, fnn.GRU)}
# (batch, seq, hidden, layers)
TRAIN_SHAPES = [(32, 64, 256, 1), (32, 128, 256, 2), (32, 64, 512, 1), (32, 128, 512, 2)]
QUICK_TRAIN_SHAPES = [(32, 64, 256, 1), (32, 64, 512, 2)]
INFER_SHAPES = [(256, 1), (256, 2), (512, 1), (512, 2)]
QUICK_INFER_SHAPES = [(256, 2), (512, 2)]
INFER_TOKENS = 64


def _pair(family: str, hidden: int, layers: int, device: str):
    torch_cls, ours_cls = PAIRS[family]
    theirs = torch_cls(hidden, hidden, num_layers=layers).to(device)
    ours = ours_cls(hidden, hidden, num_layers=layers).to(device)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _train_step(module, x, grad):
    params = [x, *module.parameters()]

    def run():
        out, _ = module(x)
        torch.autograd.grad(out, params, grad)

    return run


def _decode(module, tokens):
    def run():
        with torch.no_grad():
            state = None
            for x in tokens:
                _, state = module(x, state)

    return run


def measure(options: Options, families: list[str] | None = None) -> list[dict]:
    device = options.device
    sync = device if device == "cuda" else None
    threads = torch.get_num_threads()
    rows = []
    for family in families or list(PAIRS):
        for batch, seq, hidden, layers in (QUICK_TRAIN_SHAPES if options.quick else TRAIN_SHAPES):
            theirs, ours = _pair(family, hidden, layers, device)
            x = torch.randn(seq, batch, hidden, device=device, requires_grad=True)
            grad = torch.randn(seq, batch, hidden, device=device)
            repeat = options.repeats(5)
            a = time_callable("fastlm", _train_step(ours, x, grad), warmup=1, repeat=repeat, device=sync)
            b = time_callable("torch", _train_step(theirs, x, grad), warmup=1, repeat=repeat, device=sync)
            tokens = batch * seq
            rows.append({"case": f"{family} train B{batch} T{seq} H{hidden} L{layers}", "family": family,
                         "mode": "train", "threads": threads, "fastlm": tokens / a.seconds,
                         "torch": tokens / b.seconds, "unit": "tokens/s", "speedup": compare(a, b)})
        for hidden, layers in (QUICK_INFER_SHAPES if options.quick else INFER_SHAPES):
            theirs, ours = _pair(family, hidden, layers, device)
            steps = [torch.randn(1, 1, hidden, device=device) for _ in range(INFER_TOKENS)]
            repeat = options.repeats(7)
            a = time_callable("fastlm", _decode(ours, steps), warmup=1, repeat=repeat, device=sync)
            b = time_callable("torch", _decode(theirs, steps), warmup=1, repeat=repeat, device=sync)
            rows.append({"case": f"{family} infer b1 H{hidden} L{layers}", "family": family, "mode": "infer",
                         "threads": threads, "fastlm": a.seconds / INFER_TOKENS * 1e6,
                         "torch": b.seconds / INFER_TOKENS * 1e6, "unit": "us/token", "speedup": compare(a, b)})
    return rows


SUITE = Suite(name="recurrent", baseline="torch.nn.LSTM/GRU (oneDNN)", run=measure)
