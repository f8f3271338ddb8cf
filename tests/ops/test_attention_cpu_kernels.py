"""Each CPU attention kernel forced (FASTLM_ATTN_KERNEL=fp32|bf16) against the float64 reference.

bf16 inputs run either the fp32 micro-kernel (bf16 tiles converted to fp32) or the AVX512-BF16 one
(vdpbf16ps on bf16 tiles, fp32 sums, P and dS rounded to bf16 before their products, as FlashAttention
does on GPUs). Criterion (accuracy.py, FlashAttention's): error <= 2x that of plain torch computing the
same math in bf16 (which rounds the scores and P to bf16 too), plus half a bf16 ulp at the result's
magnitude. Rounding P and dS to bf16 adds a relative error of at most 2^-9 per term, fp32-summed:
the same order as plain bf16 torch's own roundings, so the 2x bound holds without a looser floor.
"""
import pytest
import torch

import fastlm.ops as ops

from .attention_cases import MASKS, SHAPES, check_attention, make_inputs

KERNELS = ["fp32", "bf16"]
LENGTHS = [1, 7, 65, 257]
HEAD_DIMS = [33, 40, 64, 80, 128]  # 33: an odd head size (the bf16 products take pairs along head_dim)


def _has_bf16_kernel() -> bool:
    import os

    old = os.environ.pop("FASTLM_ATTN_KERNEL", None)
    try:
        return torch.ops.fastlm.attention_cpu_kernel(torch.bfloat16) == "bf16"
    finally:
        if old is not None:
            os.environ["FASTLM_ATTN_KERNEL"] = old


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch):
    """Forces one kernel for the test; the bf16 one is skipped on CPUs without AVX512-BF16."""
    if request.param == "bf16" and not _has_bf16_kernel():
        pytest.skip("this CPU has no AVX512-BF16")
    monkeypatch.setenv("FASTLM_ATTN_KERNEL", request.param)
    assert torch.ops.fastlm.attention_cpu_kernel(torch.bfloat16) == request.param
    return request.param


def fast(q, k, v, **kw):
    return ops.attention(q, k, v, return_lse=True, **kw)


@pytest.mark.parametrize("causal, window", MASKS, ids=str)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("length", LENGTHS)
def test_forced_kernel_matches_fp64_reference(kernel, length, head_dim, causal, window):
    q, k, v = make_inputs((2, length, length, 4, 2, head_dim), torch.bfloat16)  # GQA: 2 q heads per kv head
    check_attention(fast, q, k, v, causal=causal, window=window)


@pytest.mark.parametrize("causal, window", MASKS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forced_kernel_on_the_shared_shapes(kernel, shape, causal, window):
    """Sq != Sk (bottom-right masks), MQA, head_dim 8 and 256, a long KV cache."""
    q, k, v = make_inputs(shape, torch.bfloat16)
    check_attention(fast, q, k, v, causal=causal, window=window)


@pytest.mark.parametrize("causal, window", MASKS, ids=str)
def test_forced_kernel_varlen(kernel, causal, window):
    lengths = [1, 7, 64, 65, 3, 257]
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    total = int(cu[-1])
    q = torch.randn(total, 4, 64).bfloat16().requires_grad_()
    k, v = (torch.randn(total, 1, 64).bfloat16().requires_grad_() for _ in range(2))  # MQA
    check_attention(fast, q, k, v, causal=causal, window=window, cu_seqlens=cu)


def test_forced_kernel_long_sums(kernel):
    """More than kFold (16) key and query blocks: the partial-sum folding of O, dK, dV and dQ."""
    q, k, v = make_inputs((1, 1100, 1100, 2, 1, 64), torch.bfloat16)
    check_attention(fast, q, k, v, causal=False)


def test_forced_kernel_queries_that_see_nothing(kernel):
    q, k, v = make_inputs((1, 6, 2, 2, 2, 16), torch.bfloat16)
    out, lse = ops.attention(q, k, v, causal=True, return_lse=True)
    assert torch.equal(out[:, :4], torch.zeros_like(out[:, :4]))
    assert (lse[:, :, :4] == float("-inf")).all()
    out.float().sum().backward()
    assert torch.isfinite(q.grad.float()).all() and torch.equal(q.grad[:, :4], torch.zeros_like(q.grad[:, :4]))


def test_bf16_backward_is_deterministic_across_threads(kernel):
    q, k, v = make_inputs((2, 300, 300, 4, 2, 64), torch.bfloat16)
    g = torch.randn(2, 300, 4, 64).bfloat16()
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            results.append(torch.autograd.grad(ops.attention(q, k, v, causal=True), (q, k, v), g))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(results[0], results[2]):
        assert torch.equal(a, b)


def test_fp32_inputs_always_run_the_fp32_kernel(monkeypatch):
    """FASTLM_ATTN_KERNEL only chooses for bf16 inputs: fp32 results are bitwise the same either way."""
    q, k, v = make_inputs((2, 70, 70, 4, 2, 64), torch.float32)
    g = torch.randn(2, 70, 4, 64)
    results = []
    for forced in ("fp32", "bf16" if _has_bf16_kernel() else "auto"):
        monkeypatch.setenv("FASTLM_ATTN_KERNEL", forced)
        assert torch.ops.fastlm.attention_cpu_kernel(torch.float32) == "fp32"
        out = ops.attention(q, k, v, causal=True)
        results.append((out, *torch.autograd.grad(out, (q, k, v), g)))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_default_is_the_best_kernel_this_cpu_has(monkeypatch):
    monkeypatch.delenv("FASTLM_ATTN_KERNEL", raising=False)
    best = torch.ops.fastlm.attention_cpu_kernel(torch.bfloat16)
    assert best in ("bf16", "fp32")
    assert torch.ops.fastlm.attention_cpu_kernel(torch.float16) == "fp32"  # fp16 runs through fp32 copies


def test_bad_kernel_name_raises(monkeypatch):
    monkeypatch.setenv("FASTLM_ATTN_KERNEL", "amx")
    q, k, v = make_inputs((1, 4, 4, 2, 2, 16), torch.bfloat16)
    with pytest.raises(RuntimeError, match="FASTLM_ATTN_KERNEL must be auto, bf16 or fp32"):
        ops.attention(q, k, v)


def test_forcing_bf16_without_avx512_bf16_raises(monkeypatch):
    if _has_bf16_kernel():
        pytest.skip("this CPU has AVX512-BF16")
    monkeypatch.setenv("FASTLM_ATTN_KERNEL", "bf16")
    q, k, v = make_inputs((1, 4, 4, 2, 2, 16), torch.bfloat16)
    with pytest.raises(RuntimeError, match="lacks AVX512-BF16"):
        ops.attention(q, k, v)
