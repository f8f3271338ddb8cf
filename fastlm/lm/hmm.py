"""A hidden Markov model with categorical emissions, trained by Baum-Welch, usable as a language model.

    hmm = HMM(n_states=32, vocab_size=4096).fit(sequences, n_iter=20)
    hmm.forward(seq)                  # log p(seq)
    path, logprob = hmm.viterbi(seq)  # best state path
    hmm.token_logprobs(val)           # log p(x_t | x_<t), for perplexity

Parameters are probabilities with hmmlearn's names (startprob [S], transmat [S, S], emissionprob
[S, V]). Sequences: a 1-D int tensor/array (one sequence), a 2-D [batch, T] one (equal lengths) or a
list of 1-D ones of any lengths. The recursions (fastlm.ops.hmm) are scaled forward-backward, so
they never underflow on long sequences; memory is O(T * S) per sequence. CPU runs C++ kernels over
sequences in parallel, CUDA runs Triton kernels, FASTLM_BACKEND=reference the plain-torch reference.
"""
from __future__ import annotations

import bisect
import json
import os
import tempfile
import time
from typing import Sequence, Union

import numpy as np
import torch

from fastlm.nn.sampling import check_sampling, sample_next_token
from fastlm.ops import hmm as ops

Obs = Union[torch.Tensor, np.ndarray, Sequence]

_PARAMS = ("startprob", "transmat", "emissionprob")


class HMM:
    """Categorical-emission HMM: S hidden states, tokens in [0, vocab_size)."""

    def __init__(self, n_states: int, vocab_size: int, *, seed: int = 0, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu") -> None:
        if not isinstance(n_states, int) or n_states < 1:
            raise ValueError(f"HMM: n_states must be a positive int, got {n_states!r}")
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"HMM: vocab_size must be a positive int, got {vocab_size!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"HMM: dtype must be torch.float32 or torch.float64, got {dtype}")
        self.n_states, self.vocab_size = n_states, vocab_size
        self.dtype, self.device = dtype, torch.device(device)
        self.history: list[float] = []
        gen = torch.Generator().manual_seed(seed)
        # Dirichlet(1) rows: normalised exponential draws.
        def rows(*shape: int) -> torch.Tensor:
            x = -torch.rand(*shape, generator=gen, dtype=torch.float64).clamp_min(1e-300).log()
            return x / x.sum(-1, keepdim=True)

        self.startprob, self.transmat, self.emissionprob = rows(n_states), rows(n_states, n_states), rows(
            n_states, vocab_size)

    def __repr__(self) -> str:
        return (f"HMM(n_states={self.n_states}, vocab_size={self.vocab_size}, dtype={self.dtype}, "
                f"device={self.device})")

    # --- parameters -------------------------------------------------------------------------------
    def _validated(self, name: str, value, shape: tuple[int, ...]) -> torch.Tensor:
        t = torch.as_tensor(value).detach()
        if not t.is_floating_point():
            t = t.to(torch.float64)
        if tuple(t.shape) != shape:
            raise ValueError(f"HMM: {name} must have shape {shape}, got {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
            raise ValueError(f"HMM: {name} must be finite and non-negative")
        sums = t.to(torch.float64).sum(-1)
        bad = (sums - 1).abs() > 1e-6 * max(1, shape[-1]) ** 0.5
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0]) if t.dim() > 1 else None
            where = f"row {row} sums to {float(sums.reshape(-1)[row or 0]):.8g}" if row is not None else (
                f"it sums to {float(sums):.8g}")
            raise ValueError(f"HMM: {name} rows must sum to 1 ({where})")
        return t.to(device=self.device, dtype=self.dtype).contiguous()

    @property
    def startprob(self) -> torch.Tensor:
        return self._startprob

    @startprob.setter
    def startprob(self, value) -> None:
        self._startprob = self._validated("startprob", value, (self.n_states,))

    @property
    def transmat(self) -> torch.Tensor:
        return self._transmat

    @transmat.setter
    def transmat(self, value) -> None:
        self._transmat = self._validated("transmat", value, (self.n_states, self.n_states))

    @property
    def emissionprob(self) -> torch.Tensor:
        return self._emissionprob

    @emissionprob.setter
    def emissionprob(self, value) -> None:
        self._emissionprob = self._validated("emissionprob", value, (self.n_states, self.vocab_size))

    def _params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._startprob, self._transmat, self._emissionprob

    def to(self, device: str | torch.device) -> "HMM":
        """Moves the parameters (CPU: C++ kernels; CUDA: Triton kernels)."""
        self.device = torch.device(device)
        for name in _PARAMS:
            setattr(self, f"_{name}", getattr(self, f"_{name}").to(self.device))
        return self

    # --- sequences --------------------------------------------------------------------------------
    def _batch(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor, str]:
        """(obs [B, T] int64 padded with 0, lengths [B], layout 'single' | 'batch' | 'list'), validated at once."""
        if isinstance(obs, (torch.Tensor, np.ndarray)):
            t = torch.as_tensor(obs)
            if t.dim() not in (1, 2):
                raise ValueError(f"HMM: a sequence tensor must be 1-D or 2-D [batch, T], got shape {tuple(t.shape)}")
            layout = "single" if t.dim() == 1 else "batch"
            padded = self._ids(t.reshape(1, -1) if t.dim() == 1 else t)
            lengths = torch.full((padded.shape[0],), padded.shape[1], dtype=torch.long)
            self._check_ids(padded.reshape(-1), lengths, layout)
        elif isinstance(obs, (list, tuple)):
            layout = "list"
            seqs = [self._ids(torch.as_tensor(s)) for s in obs]
            for i, s in enumerate(seqs):
                if s.dim() != 1:
                    raise ValueError(f"HMM: sequence {i} of the list must be 1-D, got shape {tuple(s.shape)}")
            lengths = torch.tensor([s.numel() for s in seqs], dtype=torch.long)
            flat = torch.cat(seqs) if seqs else torch.zeros(0, dtype=torch.long)
            self._check_ids(flat, lengths, layout)
            T = int(lengths.max()) if len(seqs) else 0
            if len(seqs) and bool((lengths == T).all()):
                padded = torch.stack(seqs)
            else:
                padded = torch.zeros(len(seqs), T, dtype=torch.long)
                padded[torch.arange(T)[None, :] < lengths[:, None]] = flat
        else:
            raise ValueError(f"HMM: sequences must be a tensor, an array or a list of them, got {type(obs).__name__}")
        return padded.to(self.device), lengths.to(self.device), layout

    @staticmethod
    def _ids(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"HMM: token ids must be integers, got {t.dtype}")
        return t.to(device="cpu", dtype=torch.long).contiguous()

    def _check_ids(self, flat: torch.Tensor, lengths: torch.Tensor, layout: str) -> None:
        """ValueError naming the first id outside [0, V) and where it is (flat: the sequences one after another)."""
        bad = ((flat < 0) | (flat >= self.vocab_size)).nonzero()
        if not bad.numel():
            return
        index = int(bad[0, 0])
        ends = lengths.cumsum(0)
        seq = int(torch.searchsorted(ends, torch.tensor(index), right=True))
        pos = index - (int(ends[seq - 1]) if seq else 0)
        where = f"position {pos}" if layout == "single" else f"sequence {seq}, position {pos}"
        raise ValueError(f"HMM: token id {int(flat[index])} at {where} is outside [0, {self.vocab_size})")

    @staticmethod
    def _unbatch(values: torch.Tensor, lengths: torch.Tensor, layout: str):
        """Per-position values [B, T, ...] back in the layout of the input."""
        if layout == "single":
            return values[0]
        if layout == "batch":
            return values
        return [values[i, : int(n)] for i, n in enumerate(lengths.tolist())]

    # --- inference ---------------------------------------------------------------------------------
    def _log_c(self, obs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        log_c, _ = ops.forward_scaled(obs, lengths, *self._params(), False)
        return log_c

    def forward(self, obs: Obs) -> torch.Tensor:
        """Log-likelihood log p(x) of each sequence: [batch], or 0-d for one 1-D sequence."""
        x, lengths, layout = self._batch(obs)
        loglik = self._log_c(x, lengths).sum(1)
        return loglik[0] if layout == "single" else loglik

    def token_logprobs(self, obs: Obs) -> torch.Tensor | list[torch.Tensor]:
        """log p(x_t | x_<t) of each token (the first from the start distribution), in obs's layout.
        Their sum over a sequence is forward(); their mean gives the perplexity exp(-mean)."""
        x, lengths, layout = self._batch(obs)
        return self._unbatch(self._log_c(x, lengths), lengths, layout)

    def perplexity(self, obs: Obs) -> float:
        """exp(-mean token log-probability) over every token of obs (as NGramLM.perplexity)."""
        lp = self.token_logprobs(obs)
        flat = torch.cat([t.reshape(-1) for t in lp]) if isinstance(lp, list) else lp.reshape(-1)
        if flat.numel() == 0:
            raise ValueError("HMM.perplexity: no tokens")
        return float(torch.exp(-flat.double().mean()))

    def backward(self, obs: Obs):
        """log beta_t(i) = log p(x_>t | z_t = i): [T, S] for one sequence, [B, T, S] for 2-D, a list for a list."""
        x, lengths, layout = self._batch(obs)
        log_c = self._log_c(x, lengths)
        beta_hat = ops.backward_scaled(x, lengths, self._transmat, self._emissionprob, log_c)
        # log beta_t = log beta_hat_t + sum_{u > t} log c_u
        suffix = log_c.flip(1).cumsum(1).flip(1)
        after = torch.cat([suffix[:, 1:], suffix.new_zeros(suffix.shape[0], 1)], dim=1)
        return self._unbatch(beta_hat.log() + after[:, :, None], lengths, layout)

    def posteriors(self, obs: Obs):
        """State posteriors gamma_t(i) = p(z_t = i | x), rows sum to 1; layout as backward()."""
        x, lengths, layout = self._batch(obs)
        log_c, alpha = ops.forward_scaled(x, lengths, *self._params(), True)
        beta = ops.backward_scaled(x, lengths, self._transmat, self._emissionprob, log_c)
        return self._unbatch(alpha * beta, lengths, layout)

    def viterbi(self, obs: Obs):
        """(best state path, its log-probability log p(x, z*)); path int64 in obs's layout."""
        x, lengths, layout = self._batch(obs)
        path, logprob = ops.viterbi(x, lengths, *self._params())
        return self._unbatch(path, lengths, layout), (logprob[0] if layout == "single" else logprob)

    # --- training ------------------------------------------------------------------------------------
    def fit(self, sequences: Obs, n_iter: int = 10, tol: float = 1e-4, verbose: bool = False, *,
            emission_pseudocount: float = 0.0) -> "HMM":
        """Baum-Welch EM over all sequences at once (batched; CPU: sequences in parallel threads).

        self.history gets the total log-likelihood of the parameters each iteration started from
        (as hmmlearn's monitor_.history): non-decreasing. Stops after n_iter iterations, or once an
        iteration gains less than tol. emission_pseudocount > 0 adds that count to every emission
        (MAP smoothing: tokens unseen in training keep a non-zero probability, as a language model
        needs; the likelihood is then no longer guaranteed non-decreasing). A state no sequence
        visits keeps its rows.
        """
        if n_iter < 1:
            raise ValueError(f"HMM.fit: n_iter must be >= 1, got {n_iter}")
        if emission_pseudocount < 0:
            raise ValueError(f"HMM.fit: emission_pseudocount must be >= 0, got {emission_pseudocount}")
        x, lengths, _ = self._batch(sequences)
        n_tokens = int(lengths.sum())
        if n_tokens == 0:
            raise ValueError("HMM.fit: the sequences hold no tokens")
        self.history = []
        for it in range(n_iter):
            started = time.perf_counter()
            loglik, start, trans, emit = ops.expected_counts(x, lengths, *self._params())
            total = float(loglik.sum())
            if not np.isfinite(total):
                raise ValueError("HMM.fit: a sequence has probability 0 under the current parameters "
                                 "(a token no state emits); refit with emission_pseudocount > 0")
            self._maximise(start, trans, emit + emission_pseudocount)
            self.history.append(total)
            if verbose:
                seconds = time.perf_counter() - started
                print(f"hmm iter {it + 1}: log-likelihood {total:.4f} ({total / n_tokens:.4f}/token), "
                      f"{n_tokens / seconds:,.0f} tokens/s")
            if len(self.history) >= 2 and self.history[-1] - self.history[-2] < tol:
                break
        return self

    @staticmethod
    def _normalised(counts: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        sums = counts.sum(-1, keepdim=True)
        return torch.where(sums > 0, counts / sums.clamp_min(torch.finfo(counts.dtype).tiny), old)

    def _maximise(self, start: torch.Tensor, trans: torch.Tensor, emit: torch.Tensor) -> None:
        self._startprob = self._normalised(start, self._startprob).contiguous()
        self._transmat = self._normalised(trans, self._transmat).contiguous()
        self._emissionprob = self._normalised(emit, self._emissionprob).contiguous()

    # --- generation ---------------------------------------------------------------------------------
    def sample(self, length: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [length], states [length]) drawn from the model (int64, on CPU)."""
        if length < 0:
            raise ValueError(f"HMM.sample: length must be >= 0, got {length}")
        start, trans, emit = (p.cpu().double() for p in self._params())
        # Inverse-CDF draws from one stream of uniforms: states step by step, tokens per state at once.
        u = torch.rand(length, 2, generator=generator, dtype=torch.float64)
        cum_start, cum_trans = start.cumsum(0).tolist(), trans.cumsum(1).tolist()
        last = self.n_states - 1
        states = torch.zeros(length, dtype=torch.long)
        prev = 0
        for t, draw in enumerate(u[:, 0].tolist()):
            prev = min(bisect.bisect_right(cum_start if t == 0 else cum_trans[prev], draw), last)
            states[t] = prev
        tokens = torch.zeros(length, dtype=torch.long)
        cum_emit = emit.cumsum(1)
        for s in states.unique().tolist():
            where = states == s
            tokens[where] = torch.searchsorted(cum_emit[s], u[where, 1], right=True).clamp_max(self.vocab_size - 1)
        return tokens, states

    def _filtered(self, history: torch.Tensor) -> torch.Tensor | None:
        """p(z_t | x_<=t) after the history (None for an empty one)."""
        if history.numel() == 0:
            return None
        x, lengths, _ = self._batch(history)
        _, alpha = ops.forward_scaled(x, lengths, *self._params(), True)
        return alpha[0, -1]

    def _predictive(self, filtered: torch.Tensor | None) -> torch.Tensor:
        state = self._startprob if filtered is None else filtered @ self._transmat
        return (state @ self._emissionprob).clamp_min(0).log()

    def next_token_logprobs(self, history: Obs) -> torch.Tensor:
        """log p(x_{t+1} = v | history) for every v: Tensor [V] (history may be empty)."""
        h = torch.as_tensor(history)
        if h.dim() != 1:
            raise ValueError(f"HMM.next_token_logprobs: history must be 1-D, got shape {tuple(h.shape)}")
        return self._predictive(self._filtered(h))

    def generate(self, prompt: Obs, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, top_p: float | None = None) -> torch.Tensor:
        """The 1-D prompt followed by max_new_tokens ids sampled from the predictive distribution
        (temperature 0 = greedy, top_k / top_p as for every fastlm model)."""
        p = torch.as_tensor(prompt).to(torch.long)
        if p.dim() != 1:
            raise ValueError(f"HMM.generate: prompt must be 1-D, got shape {tuple(p.shape)}")
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        filtered = self._filtered(p)
        out = [int(v) for v in p.tolist()]
        for _ in range(max_new_tokens):
            logits = self._predictive(filtered).double().cpu()
            token = int(sample_next_token(logits[None], temperature, top_k, top_p, generator)[0])
            out.append(token)
            state = self._startprob if filtered is None else filtered @ self._transmat
            joint = state * self._emissionprob[:, token]
            total = joint.sum()
            filtered = joint / total if total > 0 else state / state.sum()
        return torch.tensor(out, dtype=torch.long)

    # --- files ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Writes the parameters as safetensors (n_states, vocab_size in the metadata), atomically."""
        from safetensors.torch import save_file

        path = os.fspath(path)
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in _PARAMS}
        metadata = {"format": "fastlm.hmm", "n_states": str(self.n_states), "vocab_size": str(self.vocab_size),
                    "history": json.dumps(self.history)}
        fd, tmp = tempfile.mkstemp(prefix=".hmm-", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> "HMM":
        """An HMM saved by save() (safetensors only: nothing is unpickled)."""
        from safetensors import safe_open

        with safe_open(os.fspath(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "fastlm.hmm":
                raise ValueError(f"HMM.load: {path} is not a fastlm HMM file (metadata format={meta.get('format')!r})")
            missing = [n for n in _PARAMS if n not in f.keys()]
            if missing:
                raise ValueError(f"HMM.load: {path} lacks tensors {missing}")
            tensors = {n: f.get_tensor(n) for n in _PARAMS}
        try:
            n_states, vocab_size = int(meta["n_states"]), int(meta["vocab_size"])
        except (KeyError, ValueError) as error:
            raise ValueError(f"HMM.load: {path} has bad n_states/vocab_size metadata") from error
        dtype = tensors["transmat"].dtype
        model = cls(n_states, vocab_size, dtype=dtype if dtype in (torch.float32, torch.float64) else torch.float64,
                    device=device)
        for name in _PARAMS:
            setattr(model, name, tensors[name])
        model.history = [float(v) for v in json.loads(meta.get("history", "[]"))]
        return model
