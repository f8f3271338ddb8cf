"""HMM: fastlm.lm.HMM (C++ on CPU, Triton on CUDA) against hmmlearn's CategoricalHMM, same run.

Both models start from identical parameters (hmmlearn's startprob_/transmat_/emissionprob_ set from
fastlm's, init_params=""), run the same number of Baum-Welch iterations with convergence checks off,
so their log-likelihood trajectories are compared too (`max_rel_diff_history`). The data are sampled
from a separate random HMM. Rows: fit, forward (score) and viterbi (decode) tokens/s of each, the
speedup (hmmlearn time / fastlm time) and the number of threads torch ran.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from fastlm.bench.registry import Options, Suite
from fastlm.bench.timing import compare, time_callable

# (n_states, vocab_size, n_sequences, sequence_length)
SHAPES = [(16, 256, 50, 1000), (64, 256, 50, 1000), (64, 4096, 20, 2000)]
QUICK_SHAPES = [(16, 256, 20, 500)]
N_ITER = 5


def _hmmlearn_twin(model, n_iter: int):
    from hmmlearn.hmm import CategoricalHMM

    twin = CategoricalHMM(n_components=model.n_states, n_features=model.vocab_size, n_iter=n_iter, tol=-np.inf,
                          init_params="", params="ste")
    twin.startprob_ = model.startprob.double().cpu().numpy().copy()
    twin.transmat_ = model.transmat.double().cpu().numpy().copy()
    twin.emissionprob_ = model.emissionprob.double().cpu().numpy().copy()
    return twin


def _case(S: int, V: int, n_seq: int, length: int, device: str, n_iter: int, repeat: int) -> list[dict]:
    from fastlm.lm import HMM

    truth = HMM(max(2, S // 2), V, seed=1234)
    tokens, _ = truth.sample(n_seq * length, generator=torch.Generator().manual_seed(0))
    seqs = list(tokens.split(length))
    X, lengths = tokens.numpy()[:, None], [length] * n_seq
    n_tokens = n_seq * length
    sync = device if device == "cuda" else None
    shape = {"n_states": S, "vocab": V, "sequences": n_seq, "length": length, "threads": torch.get_num_threads()}
    rows = []

    # fit: one timed run each (a run is n_iter full EM iterations), from the same start.
    ours = HMM(S, V, seed=0, device=device)
    twin = _hmmlearn_twin(ours, n_iter)
    fit_ours = time_callable("fastlm", lambda: HMM(S, V, seed=0, device=device).fit(seqs, n_iter=n_iter,
                                                                                  tol=-float("inf")),
                             warmup=0, repeat=1, device=sync)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_theirs = time_callable("hmmlearn", lambda: _hmmlearn_twin(ours, n_iter).fit(X, lengths), warmup=0,
                                   repeat=1)
        twin.fit(X, lengths)
    ours.fit(seqs, n_iter=n_iter, tol=-float("inf"))
    ours_hist, theirs_hist = np.array(ours.history), np.array(twin.monitor_.history)
    rel = float(np.max(np.abs(ours_hist - theirs_hist) / np.abs(theirs_hist)))
    rows.append({"case": f"fit S={S} V={V} {n_seq}x{length} x{n_iter} iter", "op": "fit", **shape,
                 "fastlm_tok_s": n_tokens * n_iter / fit_ours.seconds,
                 "hmmlearn_tok_s": n_tokens * n_iter / fit_theirs.seconds,
                 "fastlm_s": fit_ours.seconds, "hmmlearn_s": fit_theirs.seconds, "speedup": compare(fit_ours, fit_theirs),
                 "loglik_fastlm": float(ours_hist[-1]), "loglik_hmmlearn": float(theirs_hist[-1]),
                 "max_rel_diff_history": rel})

    fresh = HMM(S, V, seed=0, device=device)
    twin = _hmmlearn_twin(fresh, 1)
    for op, mine, theirs in (("forward", lambda: fresh.forward(seqs), lambda: twin.score(X, lengths)),
                             ("viterbi", lambda: fresh.viterbi(seqs), lambda: twin.decode(X, lengths))):
        a = time_callable("fastlm", mine, warmup=1, repeat=repeat, device=sync)
        b = time_callable("hmmlearn", theirs, warmup=1, repeat=repeat)
        rows.append({"case": f"{op} S={S} V={V} {n_seq}x{length}", "op": op, **shape,
                     "fastlm_tok_s": n_tokens / a.seconds, "hmmlearn_tok_s": n_tokens / b.seconds,
                     "fastlm_s": a.seconds, "hmmlearn_s": b.seconds, "speedup": compare(a, b)})
    return rows


def measure(options: Options, shapes=None, n_iter: int | None = None) -> list[dict]:
    shapes = shapes or (QUICK_SHAPES if options.quick else SHAPES)
    n_iter = n_iter or (2 if options.quick else N_ITER)
    repeat = options.repeats(3)
    rows: list[dict] = []
    for S, V, n_seq, length in shapes:
        rows += _case(S, V, n_seq, length, options.device, n_iter, repeat)
    return rows


SUITE = Suite(name="hmm", baseline="hmmlearn CategoricalHMM", run=measure)
