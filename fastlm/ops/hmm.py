"""Hidden Markov model recursions on a padded batch of sequences: the one place that picks their implementation.

    log_c, alpha = fastlm.ops.hmm.forward_scaled(obs, lengths, startprob, transmat, emissionprob)
    beta = fastlm.ops.hmm.backward_scaled(obs, lengths, transmat, emissionprob, log_c)
    path, logprob = fastlm.ops.hmm.viterbi(obs, lengths, startprob, transmat, emissionprob)
    loglik, start, trans, emit = fastlm.ops.hmm.expected_counts(obs, lengths, startprob, transmat, emissionprob)

obs [B, T] int64 (padded; row b has lengths[b] tokens), parameters as probabilities (float32 or
float64). CPU tensors run the C++ kernels (csrc/cpu/hmm.cpp: scaled forward-backward, sequences in
parallel), CUDA tensors the Triton ones (kernels/hmm.py: one program per sequence; the expected counts
are composed from the forward and backward outputs in torch), FASTLM_BACKEND=reference or a missing
extension the plain-torch log-space reference (fastlm/ops/reference_hmm.py). Callers validate inputs
(fastlm.lm.HMM does); the kernels check shapes and token ids again.
"""
from __future__ import annotations

import torch

from fastlm.ops import reference_hmm as reference
from fastlm.ops._backend import forced_backend
from fastlm.ops._library import register_op


def _triton(name: str):
    def load():
        from fastlm.kernels import hmm as triton_hmm

        return getattr(triton_hmm, name)

    return load


def expected_counts_from_passes(obs, lengths, startprob, transmat, emissionprob):
    """Expected counts composed from the scaled forward and backward ops (the CUDA path; any device)."""
    log_c, alpha = torch.ops.fastlm.hmm_forward_scaled(obs, lengths, startprob, transmat, emissionprob, True)
    beta = torch.ops.fastlm.hmm_backward_scaled(obs, lengths, transmat, emissionprob, log_c)
    B, T = obs.shape
    S, V = emissionprob.shape
    steps = torch.arange(T, device=obs.device)
    valid = steps[None, :] < lengths[:, None]
    loglik = (log_c * valid).sum(1)
    valid = valid & torch.isfinite(loglik)[:, None]  # an impossible sequence contributes no counts
    mask = valid.to(alpha.dtype)[:, :, None]
    gamma = alpha * beta * mask
    start = gamma[:, 0].sum(0) if T else startprob.new_zeros(S)
    emit = emissionprob.new_zeros(S, V).index_add_(1, obs[valid], gamma[valid].T)
    # xi_{t-1}(i, j) = alpha_hat_{t-1}[i] a_ij w_t[j], w_t = b_j(x_t) beta_hat_t[j] / c_t
    w = emissionprob.T[obs] * beta * torch.exp(-log_c.masked_fill(~valid, 0.0))[:, :, None] * mask
    trans = torch.einsum("bti,btj->ij", alpha[:, :-1], w[:, 1:]) * transmat
    return loglik, start, trans, emit


def _fake_forward(obs, lengths, startprob, transmat, emissionprob, store_alpha):
    B, T, S = obs.shape[0], obs.shape[1], transmat.shape[0]
    alpha = transmat.new_empty(B, T, S) if store_alpha else transmat.new_empty(0)
    return transmat.new_empty(B, T), alpha


def _fake_backward(obs, lengths, transmat, emissionprob, log_c):
    return transmat.new_empty(obs.shape[0], obs.shape[1], transmat.shape[0])


def _fake_viterbi(obs, lengths, startprob, transmat, emissionprob):
    return obs.new_empty(obs.shape), transmat.new_empty(obs.shape[0])


def _fake_counts(obs, lengths, startprob, transmat, emissionprob):
    S, V = emissionprob.shape
    return transmat.new_empty(obs.shape[0]), transmat.new_empty(S), transmat.new_empty(S, S), transmat.new_empty(S, V)


register_op("hmm_forward_scaled", reference=reference.hmm_forward_scaled, triton=_triton("hmm_forward_scaled"),
            fake=_fake_forward)
register_op("hmm_backward_scaled", reference=reference.hmm_backward_scaled, triton=_triton("hmm_backward_scaled"),
            fake=_fake_backward)
register_op("hmm_viterbi", reference=reference.hmm_viterbi, triton=_triton("hmm_viterbi"), fake=_fake_viterbi)
register_op("hmm_expected_counts", reference=reference.hmm_expected_counts,
            triton=lambda: expected_counts_from_passes, fake=_fake_counts)


def _reference() -> bool:
    return forced_backend() == "reference"


def forward_scaled(obs, lengths, startprob, transmat, emissionprob, store_alpha: bool = False):
    """(log_c [B, T]: log p(x_t | x_<t), 0 on padding; alpha_hat [B, T, S] or empty)."""
    if _reference():
        return reference.hmm_forward_scaled(obs, lengths, startprob, transmat, emissionprob, store_alpha)
    return torch.ops.fastlm.hmm_forward_scaled(obs, lengths, startprob, transmat, emissionprob, store_alpha)


def backward_scaled(obs, lengths, transmat, emissionprob, log_c):
    """beta_hat [B, T, S] = beta_t / prod_{u>t} c_u (log beta = log beta_hat + the suffix sum of log_c)."""
    if _reference():
        return reference.hmm_backward_scaled(obs, lengths, transmat, emissionprob, log_c)
    return torch.ops.fastlm.hmm_backward_scaled(obs, lengths, transmat, emissionprob, log_c)


def viterbi(obs, lengths, startprob, transmat, emissionprob):
    """(path [B, T] int64, 0 on padding; log-probability of each best path [B])."""
    if _reference():
        return reference.hmm_viterbi(obs, lengths, startprob, transmat, emissionprob)
    return torch.ops.fastlm.hmm_viterbi(obs, lengths, startprob, transmat, emissionprob)


def expected_counts(obs, lengths, startprob, transmat, emissionprob):
    """(loglik [B], start counts [S], transition counts [S, S], emission counts [S, V]) of the E step."""
    if _reference():
        return reference.hmm_expected_counts(obs, lengths, startprob, transmat, emissionprob)
    return torch.ops.fastlm.hmm_expected_counts(obs, lengths, startprob, transmat, emissionprob)
