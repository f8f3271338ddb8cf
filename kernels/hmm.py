"""HMM recursions in Triton: one program per sequence, the state vector in one block, the transition
matrix held in registers (suits S up to a few hundred). Same signatures and outputs as the
torch.ops.fastlm.hmm_* ops (fastlm/ops/schemas.py); math in the parameters' dtype (float32/float64).

Forward and backward are scaled (Rabiner): the state vector is renormalised every step and the
log of the normaliser c_t = p(x_t | x_<t) is kept, so nothing underflows. Viterbi runs in log space
and writes back-pointers [B, T, S] int32 to global memory, then traces the path back in the same
program (after a barrier, so every thread sees the pointers).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _forward_kernel(OBS, LENGTHS, START, TRANS, EMIT_T, LOG_C, ALPHA, T, S,
                    STORE_ALPHA: tl.constexpr, BLOCK_S: tl.constexpr):
    b = tl.program_id(0)
    n = tl.load(LENGTHS + b)
    i = tl.arange(0, BLOCK_S)
    smask = i < S
    trans = tl.load(TRANS + i[:, None] * S + i[None, :], mask=smask[:, None] & smask[None, :], other=0.0)
    start = tl.load(START + i, mask=smask, other=0.0)
    alpha = start
    for t in range(0, n):
        x = tl.load(OBS + b * T + t)
        pred = tl.where(t == 0, start, tl.sum(alpha[:, None] * trans, axis=0))
        cur = pred * tl.load(EMIT_T + x * S + i, mask=smask, other=0.0)
        c = tl.sum(cur, axis=0)
        # c = 0: the token is impossible; log 0 = -inf and the recursion goes on from the prediction.
        safe_c = tl.where(c > 0, c, 1.0)
        pred_sum = tl.sum(pred, axis=0)
        alpha = tl.where(c > 0, cur / safe_c, pred / tl.where(pred_sum > 0, pred_sum, 1.0))
        tl.store(LOG_C + b * T + t, tl.where(c > 0, tl.log(safe_c), float("-inf")))
        if STORE_ALPHA:
            tl.store(ALPHA + (b * T + t) * S + i, alpha, mask=smask)


@triton.jit
def _backward_kernel(OBS, LENGTHS, TRANS, EMIT_T, LOG_C, BETA, T, S, BLOCK_S: tl.constexpr):
    b = tl.program_id(0)
    n = tl.load(LENGTHS + b)
    i = tl.arange(0, BLOCK_S)
    smask = i < S
    trans = tl.load(TRANS + i[:, None] * S + i[None, :], mask=smask[:, None] & smask[None, :], other=0.0)
    beta = tl.where(smask, 1.0, 0.0).to(trans.dtype)
    if n > 0:
        tl.store(BETA + (b * T + n - 1) * S + i, beta, mask=smask)
    for k in range(1, n):
        t = n - 1 - k
        x = tl.load(OBS + b * T + t + 1)
        log_c = tl.load(LOG_C + b * T + t + 1)
        finite = log_c > float("-inf")
        w = tl.load(EMIT_T + x * S + i, mask=smask, other=0.0) * beta * tl.exp(-tl.where(finite, log_c, 0.0))
        stepped = tl.sum(trans * w[None, :], axis=1)
        beta = tl.where(finite, stepped, tl.where(smask, 1.0, 0.0).to(trans.dtype))
        tl.store(BETA + (b * T + t) * S + i, beta, mask=smask)


@triton.jit
def _viterbi_kernel(OBS, LENGTHS, LOG_START, LOG_TRANS, LOG_EMIT_T, BACK, PATH, LOGPROB, T, S,
                    BLOCK_S: tl.constexpr):
    b = tl.program_id(0)
    n = tl.load(LENGTHS + b)
    i = tl.arange(0, BLOCK_S)
    smask = i < S
    log_trans = tl.load(LOG_TRANS + i[:, None] * S + i[None, :], mask=smask[:, None] & smask[None, :],
                        other=float("-inf"))
    if n > 0:
        x0 = tl.load(OBS + b * T)
        delta = tl.load(LOG_START + i, mask=smask, other=float("-inf")) + tl.load(
            LOG_EMIT_T + x0 * S + i, mask=smask, other=float("-inf"))
        for t in range(1, n):
            scores = delta[:, None] + log_trans  # [from, to]
            best = tl.max(scores, axis=0)
            arg = tl.argmax(scores, axis=0)
            tl.store(BACK + (b * T + t) * S + i, arg.to(tl.int32), mask=smask)
            x = tl.load(OBS + b * T + t)
            delta = best + tl.load(LOG_EMIT_T + x * S + i, mask=smask, other=float("-inf"))
        tl.store(LOGPROB + b, tl.max(delta, axis=0))
        state = tl.argmax(delta, axis=0).to(tl.int64)
        tl.debug_barrier()
        tl.store(PATH + b * T + n - 1, state)
        for k in range(1, n):
            t = n - k
            state = tl.load(BACK + (b * T + t) * S + state).to(tl.int64)
            tl.store(PATH + b * T + t - 1, state)


def _block(S: int) -> int:
    return max(16, triton.next_power_of_2(S))


def hmm_forward_scaled(obs, lengths, startprob, transmat, emissionprob, store_alpha: bool):
    B, T = obs.shape
    S = transmat.shape[0]
    log_c = transmat.new_zeros(B, T)
    alpha = transmat.new_zeros(B, T, S) if store_alpha else transmat.new_empty(0)
    if B and T:
        _forward_kernel[(B,)](obs.contiguous(), lengths.contiguous(), startprob.contiguous(), transmat.contiguous(),
                              emissionprob.T.contiguous(), log_c, alpha if store_alpha else log_c, T, S,
                              STORE_ALPHA=store_alpha, BLOCK_S=_block(S))
    return log_c, alpha


def hmm_backward_scaled(obs, lengths, transmat, emissionprob, log_c):
    B, T = obs.shape
    S = transmat.shape[0]
    beta = transmat.new_zeros(B, T, S)
    if B and T:
        _backward_kernel[(B,)](obs.contiguous(), lengths.contiguous(), transmat.contiguous(),
                               emissionprob.T.contiguous(), log_c.contiguous(), beta, T, S, BLOCK_S=_block(S))
    return beta


def hmm_viterbi(obs, lengths, startprob, transmat, emissionprob):
    B, T = obs.shape
    S = transmat.shape[0]
    path = torch.zeros(B, T, dtype=torch.long, device=obs.device)
    logprob = transmat.new_zeros(B)
    if B and T:
        back = torch.zeros(B, T, S, dtype=torch.int32, device=obs.device)
        _viterbi_kernel[(B,)](obs.contiguous(), lengths.contiguous(), startprob.log().contiguous(),
                              transmat.log().contiguous(), emissionprob.log().T.contiguous(), back, path, logprob,
                              T, S, BLOCK_S=_block(S))
    return path, logprob
