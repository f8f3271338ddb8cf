"""fastlm.quant on CUDA (the Triton int8 kernels under Int8Linear, SwitchBack, QAT): skipped without a GPU.

FASTLM_TEST_DEVICE=cpu runs the same checks on the CPU kernels (a self-check of this file).
"""
import copy
import os

import pytest
import torch
from torch import nn

from fastlm.models import GPT, GPTConfig
from fastlm.quant import Int8Linear, Int8TrainLinear, convert, prepare_qat, quantize_model

from ..quant.test_int8_linear import error_bound

DEVICE = os.environ.get("FASTLM_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("scheme", ["w8a8", "w8a16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k,n", [(1, 4096, 1024), (3, 17, 5), (130, 257, 129)])
def test_int8_linear_on_cuda(scheme, dtype, m, k, n):
    linear = nn.Linear(k, n, device=DEVICE)
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    layer = Int8Linear.from_linear(linear, scheme)
    y = layer(x)
    assert y.dtype == dtype and y.device.type == torch.device(DEVICE).type
    exact = x.double() @ linear.weight.double().t() + linear.bias.double()
    # The bound of the quantization, plus the rounding of the 16-bit output.
    slack = exact.abs() * (torch.finfo(dtype).eps if dtype != torch.float32 else 1e-6) + 1e-4
    assert ((y.double() - exact).abs() <= error_bound(x.float(), linear.weight.detach(), scheme) * 1.001 + slack).all()


def test_quantized_gpt_on_cuda():
    model = GPT(GPTConfig(family="llama", vocab_size=256, n_layer=2, n_head=4, d_model=128, max_seq_len=64)).to(DEVICE)
    ids = torch.randint(0, 256, (2, 64), device=DEVICE)
    with torch.no_grad():
        ref = model(ids)
        for scheme in ("w8a8", "w8a16"):
            q = quantize_model(copy.deepcopy(model), scheme, smooth=0.5 if scheme == "w8a8" else None,
                               calibration_batches=[ids] if scheme == "w8a8" else None)
            with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
                out = q(ids)
            assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_switchback_and_qat_on_cuda():
    linear = nn.Linear(256, 128, device=DEVICE)
    fast = Int8TrainLinear.from_linear(linear)
    x = torch.randn(64, 256, device=DEVICE, requires_grad=True)
    with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        y = fast(x)
    g = torch.randn_like(y)
    y.backward(g)
    w = linear.weight.detach().double()
    rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(x.grad, g.double() @ w) < 0.03
    assert rel(linear.weight.grad, g.double().t() @ x.detach().double()) < 0.01

    model = GPT(GPTConfig(family="gpt2", vocab_size=128, n_layer=2, n_head=4, d_model=64, max_seq_len=32)).to(DEVICE)
    prepare_qat(model)
    ids = torch.randint(0, 128, (2, 32), device=DEVICE)
    with torch.no_grad():
        fake = model(ids)
        real = convert(model)(ids)
    diff, top = (real - fake).abs(), fake.abs().max()  # see tests/quant/test_qat.py
    assert (diff > 1e-4 * top).float().mean() < 0.01 and diff.max() < 0.02 * top
