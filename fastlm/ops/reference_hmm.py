"""Plain-torch HMM recursions in log space: the oracle of the native kernels and their fallback.

Same signatures and outputs as the torch.ops.fastlm.hmm_* ops (schemas in fastlm/ops/schemas.py):
a padded batch obs [B, T] int64 with lengths [B], parameters as probabilities. The recursions run
in log space with logsumexp (a different algorithm from the kernels' scaled one, so agreement is a
real check); the scaled quantities the ops return are derived from the log ones at the end.
"""
from __future__ import annotations

import torch


def _logs(startprob, transmat, emissionprob):
    return startprob.log(), transmat.log(), emissionprob.log()


def _log_alpha(x: torch.Tensor, log_start, log_trans, log_emit) -> torch.Tensor:
    """log alpha [n, S] of one sequence x [n]."""
    out = torch.empty(x.numel(), log_trans.shape[0], dtype=log_trans.dtype)
    for t in range(x.numel()):
        prev = log_start if t == 0 else torch.logsumexp(out[t - 1][:, None] + log_trans, dim=0)
        out[t] = prev + log_emit[:, x[t]]
    return out


def _log_beta(x: torch.Tensor, log_trans, log_emit) -> torch.Tensor:
    out = torch.zeros(x.numel(), log_trans.shape[0], dtype=log_trans.dtype)
    for t in range(x.numel() - 2, -1, -1):
        out[t] = torch.logsumexp(log_trans + (log_emit[:, x[t + 1]] + out[t + 1])[None, :], dim=1)
    return out


def _log_c(log_alpha: torch.Tensor) -> torch.Tensor:
    """log p(x_t | x_<t) = log p(x_<=t) - log p(x_<t)."""
    log_z = torch.logsumexp(log_alpha, dim=1)
    return torch.diff(log_z, prepend=log_z.new_zeros(1))


def _sequences(obs: torch.Tensor, lengths: torch.Tensor):
    for b in range(obs.shape[0]):
        yield b, obs[b, : int(lengths[b])].cpu()


def hmm_forward_scaled(obs, lengths, startprob, transmat, emissionprob, store_alpha: bool):
    logs = [p.cpu() for p in _logs(startprob, transmat, emissionprob)]
    B, T, S = obs.shape[0], obs.shape[1], transmat.shape[0]
    log_c = torch.zeros(B, T, dtype=transmat.dtype)
    alpha = torch.zeros(B, T, S, dtype=transmat.dtype) if store_alpha else torch.empty(0, dtype=transmat.dtype)
    for b, x in _sequences(obs, lengths):
        la = _log_alpha(x, *logs)
        log_c[b, : x.numel()] = _log_c(la)
        if store_alpha:
            alpha[b, : x.numel()] = torch.softmax(la, dim=1)
    return log_c.to(transmat.device), alpha.to(transmat.device)


def hmm_backward_scaled(obs, lengths, transmat, emissionprob, log_c):
    log_trans, log_emit = transmat.log().cpu(), emissionprob.log().cpu()
    B, T, S = obs.shape[0], obs.shape[1], transmat.shape[0]
    beta = torch.zeros(B, T, S, dtype=transmat.dtype)
    for b, x in _sequences(obs, lengths):
        lb = _log_beta(x, log_trans, log_emit)
        # beta_hat_t = beta_t / prod_{u>t} c_u
        tail = torch.flip(torch.cumsum(torch.flip(log_c[b, : x.numel()].cpu(), [0]), 0), [0])
        after = torch.cat([tail[1:], tail.new_zeros(1)])
        beta[b, : x.numel()] = torch.exp(lb - after[:, None])
    return beta.to(transmat.device)


def hmm_viterbi(obs, lengths, startprob, transmat, emissionprob):
    log_start, log_trans, log_emit = (p.cpu() for p in _logs(startprob, transmat, emissionprob))
    B, T = obs.shape
    path = torch.zeros(B, T, dtype=torch.long)
    logprob = torch.zeros(B, dtype=transmat.dtype)
    for b, x in _sequences(obs, lengths):
        n = x.numel()
        if n == 0:
            continue
        delta = log_start + log_emit[:, x[0]]
        back = []
        for t in range(1, n):
            scores = delta[:, None] + log_trans  # [from, to]
            delta, arg = scores.max(dim=0)
            delta = delta + log_emit[:, x[t]]
            back.append(arg)
        state = int(delta.argmax())
        logprob[b] = delta[state]
        path[b, n - 1] = state
        for t in range(n - 1, 0, -1):
            state = int(back[t - 1][state])
            path[b, t - 1] = state
    return path.to(obs.device), logprob.to(transmat.device)


def hmm_expected_counts(obs, lengths, startprob, transmat, emissionprob):
    log_start, log_trans, log_emit = (p.cpu() for p in _logs(startprob, transmat, emissionprob))
    S, V = emissionprob.shape
    dtype = transmat.dtype
    loglik = torch.zeros(obs.shape[0], dtype=dtype)
    start_counts = torch.zeros(S, dtype=dtype)
    trans_counts = torch.zeros(S, S, dtype=dtype)
    emit_counts = torch.zeros(S, V, dtype=dtype)
    for b, x in _sequences(obs, lengths):
        n = x.numel()
        if n == 0:
            continue
        la, lb = _log_alpha(x, log_start, log_trans, log_emit), _log_beta(x, log_trans, log_emit)
        log_p = torch.logsumexp(la[-1], dim=0)
        loglik[b] = log_p
        if not torch.isfinite(log_p):
            continue
        gamma = torch.exp(la + lb - log_p)
        start_counts += gamma[0]
        emit_counts.index_add_(1, x, gamma.T)
        if n > 1:  # xi_t(i, j) = alpha_t(i) a_ij b_j(x_t+1) beta_t+1(j) / p
            log_xi = la[:-1, :, None] + log_trans[None] + (log_emit[:, x[1:]].T + lb[1:])[:, None, :] - log_p
            trans_counts += torch.exp(log_xi).sum(0)
    device = transmat.device
    return loglik.to(device), start_counts.to(device), trans_counts.to(device), emit_counts.to(device)
