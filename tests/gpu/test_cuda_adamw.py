"""fastlm.optim.AdamW on CUDA parameters (the Triton kernel, compiled for real) against torch.optim.AdamW.
Skipped without a GPU."""
import pytest
import torch

from fastlm.optim import AdamW
from tests.optim.test_adamw import _groups, _params, _set_grads

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cuda_adamw_equals_torch_adamw():
    ours = [p.detach().cuda().requires_grad_() for p in _params()]
    theirs = [p.detach().cuda().requires_grad_() for p in _params()]
    opt, ref = AdamW(_groups(ours)), torch.optim.AdamW(_groups(theirs), foreach=False)
    for step in range(30):
        _set_grads(step, [ours, theirs], torch.float32)
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=2e-5, atol=2e-6)
