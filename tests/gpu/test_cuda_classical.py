"""The CUDA paths of the classical models, compiled for real: the HMM recursions (Triton), the
maxent op hashed_window_sum (Triton) and the recurrent layers (cuBLAS + Triton gate kernels).

Skipped without a GPU (benchmarks/gpu_check.sh runs them); FASTLM_TEST_DEVICE=cpu runs the same
checks on the CPU kernels (a self-check of this file). Each compares the device against an
independent result: the float64 CPU model, the plain-torch reference, torch.nn.
"""
import copy
import os

import pytest
import torch

import fastlm.ops as ops
from fastlm.lm import HMM
from fastlm.nn import GRU, LSTM
from fastlm.ops.reference_hashed_window import hashed_window_sum_fwd

DEVICE = os.environ.get("FASTLM_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _sequences(vocab: int, lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g) for n in lengths]


@pytest.mark.parametrize("n_states, vocab", [(5, 11), (33, 200)])
def test_hmm_on_device_equals_the_cpu_model(n_states, vocab):
    cpu = HMM(n_states, vocab, seed=1)
    dev = copy.deepcopy(cpu).to(DEVICE)
    seqs = _sequences(vocab, [1, 17, 300, 64])
    torch.testing.assert_close(dev.forward([s.to(DEVICE) for s in seqs]).cpu(), cpu.forward(seqs),
                               rtol=1e-9, atol=1e-9)
    for s in seqs:
        path_dev, lp_dev = dev.viterbi(s.to(DEVICE))
        path_cpu, lp_cpu = cpu.viterbi(s)
        assert torch.equal(path_dev.cpu(), path_cpu)
        torch.testing.assert_close(torch.as_tensor(lp_dev).cpu(), torch.as_tensor(lp_cpu), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(dev.posteriors(s.to(DEVICE)).cpu(), cpu.posteriors(s), rtol=1e-7, atol=1e-9)
    cpu.fit(seqs, n_iter=3, tol=0)
    dev.fit([s.to(DEVICE) for s in seqs], n_iter=3, tol=0)
    torch.testing.assert_close(torch.tensor(dev.history), torch.tensor(cpu.history), rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("rows, features, vocab, buckets", [(7, 1, 13, 97), (64, 3, 500, 4099)])
def test_hashed_window_sum_on_device_matches_the_reference(rows, features, vocab, buckets):
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(buckets, generator=g, dtype=torch.float64)
    hashes = torch.randint(-1, buckets, (rows, features), generator=g)
    theta_dev = theta.float().to(DEVICE).requires_grad_()
    out = ops.hashed_window_sum(theta_dev, hashes.to(DEVICE), vocab)
    want = hashed_window_sum_fwd(theta, hashes, vocab)
    torch.testing.assert_close(out.double().cpu(), want, rtol=1e-5, atol=1e-5)
    grad = torch.randn(rows, vocab, generator=g, dtype=torch.float64)
    out.backward(grad.float().to(DEVICE))
    theta64 = theta.clone().requires_grad_()
    hashed_window_sum_fwd(theta64, hashes, vocab).backward(grad)
    torch.testing.assert_close(theta_dev.grad.double().cpu(), theta64.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cls, torch_cls", [(LSTM, torch.nn.LSTM), (GRU, torch.nn.GRU)])
def test_recurrent_layers_on_device_equal_torch_nn(cls, torch_cls):
    torch.manual_seed(0)
    theirs = torch_cls(24, 33, num_layers=2, batch_first=True).to(DEVICE)
    ours = cls(24, 33, num_layers=2, batch_first=True).to(DEVICE)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 19, 24, device=DEVICE)
    out_ours, _ = ours(x)
    out_theirs, _ = theirs(x)
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-4, atol=1e-5)
    out_ours.square().sum().backward()
    out_theirs.square().sum().backward()
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-4, msg=name)
