"""Triton HMM kernels against the plain-torch log-space reference (TRITON_INTERPRET=1, own pytest process)."""
import pytest
import torch

from fastlm.ops import reference_hmm as reference

pytestmark = pytest.mark.triton
hmm = pytest.importorskip("fastlm.kernels.hmm")


def _case(S, V, lengths, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rows(*shape):
        x = torch.rand(*shape, generator=gen, dtype=torch.float64) + 0.05
        return (x / x.sum(-1, keepdim=True)).to(dtype)

    T = max(lengths)
    obs = torch.randint(0, V, (len(lengths), T), generator=gen)
    lengths = torch.tensor(lengths)
    obs[torch.arange(T)[None, :] >= lengths[:, None]] = 0
    return obs, lengths, rows(S), rows(S, S), rows(S, V)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("S,V,lengths", [(3, 5, [7, 1, 4]), (17, 9, [12, 12]), (5, 4, [6, 0, 3])])
def test_forward_backward_viterbi(dtype, S, V, lengths):
    obs, lengths, start, trans, emit = _case(S, V, lengths, dtype)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-6)
    want_c, want_alpha = reference.hmm_forward_scaled(obs, lengths, start.double(), trans.double(), emit.double(), True)
    log_c, alpha = hmm.hmm_forward_scaled(obs, lengths, start, trans, emit, True)
    assert log_c.dtype == dtype
    torch.testing.assert_close(log_c.double(), want_c, **tol)
    torch.testing.assert_close(alpha.double(), want_alpha, **tol)
    beta = hmm.hmm_backward_scaled(obs, lengths, trans, emit, log_c)
    want_beta = reference.hmm_backward_scaled(obs, lengths, trans.double(), emit.double(), want_c)
    torch.testing.assert_close(beta.double(), want_beta, **tol)
    path, logprob = hmm.hmm_viterbi(obs, lengths, start, trans, emit)
    want_path, want_lp = reference.hmm_viterbi(obs, lengths, start.double(), trans.double(), emit.double())
    assert torch.equal(path, want_path)
    torch.testing.assert_close(logprob.double(), want_lp, **tol)


def test_an_impossible_token_gives_minus_infinity_and_the_recursion_goes_on():
    obs, lengths, start, trans, emit = _case(3, 4, [5], torch.float64)
    emit[:, 2] = 0.0
    emit = emit / emit.sum(1, keepdim=True)
    obs[0] = torch.tensor([0, 2, 1, 3, 0])
    log_c, _ = hmm.hmm_forward_scaled(obs, lengths, start, trans, emit, False)
    want, _ = reference.hmm_forward_scaled(obs, lengths, start, trans, emit, False)
    assert log_c[0, 1] == float("-inf")
    torch.testing.assert_close(log_c[0, [0]], want[0, [0]])
    assert torch.isfinite(log_c[0, 2:]).all()
