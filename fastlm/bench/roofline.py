"""Model FLOPs utilisation (MFU) against the machine's own GEMM roofline.

FLOPs per trained token follow PaLM (Chowdhery et al. 2022, appendix B), the count Megatron-LM and
nanoGPT use too:  6 N + 12 L H Q T,  where
  N  the parameters that multiply activations: the weights of every Linear (the LM head included,
     once when tied); not the embedding lookups, norms or biases (no GEMM);
  6  2 FLOPs per multiply-add, x3 for forward + the two backward GEMMs (input and weight gradients);
  12 L H Q T  attention's two batched products (Q K^T and P V), forward + backward, over the full
     T x T score matrix (not halved for the causal mask), L layers, H heads of width Q, context T.

The peak is not a datasheet figure: it is the best GEMM throughput (torch's or fastlm's own,
whichever is faster here) measured on the model's own GEMM shapes (each Linear's forward,
input-gradient and weight-gradient products at M = batch x context), in the dtype the run trains
in, on the same machine in the same process as the training it is compared with.
MFU = FLOPs per token x tokens/s / that peak.
"""
from __future__ import annotations

import time

import torch

MIN_TIME = 0.05  # seconds each timing loops a GEMM for (tests shrink it)


def linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The model's Linear modules, each weight once (a tied LM head shares the embedding's)."""
    seen, out = set(), []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            out.append(module)
    return out


def matmul_params(model: torch.nn.Module) -> int:
    """N of 6N: the number of weights that multiply activations (every Linear's weight)."""
    return sum(m.weight.numel() for m in linears(model))


def model_flops_per_token(model: torch.nn.Module, cfg, seq_len: int) -> float:
    """Training FLOPs per token: 6 N + 12 L H Q T (PaLM); `cfg` is the resolved GPTConfig."""
    return 6 * matmul_params(model) + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len


def gemm_shapes(model: torch.nn.Module, tokens: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of every distinct GEMM a training step of `tokens` tokens runs through the Linears:
    forward x W^T (tokens, in, out), input gradient dY W (tokens, out, in), weight gradient dY^T x
    (out, tokens, in)."""
    shapes = set()
    for m in linears(model):
        n_out, n_in = m.weight.shape
        shapes.update({(tokens, n_in, n_out), (tokens, n_out, n_in), (n_out, tokens, n_in)})
    return sorted(shapes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_gflops(shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device, repeats: int = 3) -> float:
    """The best GFLOP/s of torch.matmul and fastlm.ops.matmul on an (M, K) x (K, N) product: best of
    `repeats` timings of each, each looping the product for at least MIN_TIME seconds (one warm-up
    call first). fastlm's own GEMM counts because on some CPUs it is the faster one (oneDNN's fp32
    GEMM where torch's BLAS takes an AVX2 path): the peak is the best this machine offers the run."""
    from fastlm import ops

    m, k, n = shape
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(m, k, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, k, generator=g).to(device=device, dtype=dtype).t()  # a weight's layout, as Linear reads it
    return max(_rate(matmul, a, b, device, repeats) for matmul in (torch.matmul, ops.matmul))


def _rate(matmul, a: torch.Tensor, b: torch.Tensor, device: torch.device, repeats: int) -> float:
    matmul(a, b)
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        calls, t0 = 0, time.perf_counter()
        while True:
            matmul(a, b)
            calls += 1
            if device.type == "cuda" and calls % 10:
                continue
            _sync(device)
            elapsed = time.perf_counter() - t0
            if elapsed >= MIN_TIME:
                break
        best = min(best, elapsed / calls)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / best / 1e9


def peak_gflops(shapes, dtype: torch.dtype, device: torch.device, repeats: int = 3) -> tuple[float, tuple]:
    """The best GEMM throughput over `shapes` in `dtype`: (GFLOP/s, the shape that reached it)."""
    rates = {shape: gemm_gflops(shape, dtype, device, repeats) for shape in shapes}
    best = max(rates, key=rates.get)
    return rates[best], best
