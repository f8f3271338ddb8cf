"""train.optimizer_offload's engine with CUDA parameters: pinned host states, gradients copied down per
bucket during the backward, the CPU AdamW per bucket, parameters copied back; equal to AdamW on the GPU.
Skipped without a GPU (tests/optim/test_offload.py runs the same engine with CPU parameters)."""
import pytest
import torch

from fastlm.optim import AdamW
from fastlm.optim.offload import OffloadedAdamW
from tests.optim.test_offload import _groups, _model, _train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_cuda_offload_equals_adamw_on_the_gpu(clip):
    plain, offloaded = _model(device="cuda"), _model(device="cuda")
    opt_a = torch.optim.AdamW(_groups(plain), lr=1e-2, foreach=False)
    opt_b = OffloadedAdamW(_groups(offloaded), lr=1e-2, bucket_elems=300)
    assert all(m.is_pinned() for m in opt_b.masters) and all(g.is_pinned() for g in opt_b.host_grads)
    _train(plain, opt_a, 6, clip)
    _train(offloaded, opt_b, 6, clip)
    for p, q in zip(plain.parameters(), offloaded.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=2e-6)
    opt_b.close()


def test_cuda_offload_bf16_params():
    plain, offloaded = _model(torch.bfloat16, "cuda"), _model(torch.bfloat16, "cuda")
    opt_a = AdamW(_groups(plain), lr=1e-2)  # the Triton kernel, fp32 masters on the GPU
    opt_b = OffloadedAdamW(_groups(offloaded), lr=1e-2, bucket_elems=300)
    _train(plain, opt_a, 5, 0.0)
    _train(offloaded, opt_b, 5, 0.0)
    flat = [p for g in opt_a.param_groups for p in g["params"]]
    state = opt_b.state_dict()["state"]
    for i, p in enumerate(flat):
        if p in opt_a.state:
            torch.testing.assert_close(state[i]["master"], opt_a.state[p]["master"].cpu(), rtol=1e-5, atol=2e-6)
    for p, q in zip(plain.parameters(), offloaded.parameters()):
        torch.testing.assert_close(q.float(), p.float(), rtol=2**-7, atol=1e-5)  # one bf16 ulp at most
