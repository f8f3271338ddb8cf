"""Offline teachers: the teacher's top-k log-probabilities (and tail mass) for a run's training stream.

    fastlm distill CONFIG --save-teacher DIR      # runs the teacher once over train.steps steps (one process)
    fastlm train CONFIG --set distill.teacher_store=DIR --set distill.teacher=""   # any dp size, shares, resume

DIR holds meta.json and memory-mapped arrays with one entry per sequence of the training stream, in
global stream order (entry s x global_batch_size + j is sequence j of step s, as BatchLoader draws them;
the stream is a pure function of the seed and the step, the same for every number of processes):
logprobs.f32 (sequences, seq_len, k + 1) float32, the teacher's log-probabilities at distill.temperature
of its top-k tokens and of the rest (last); index.i32 (sequences, seq_len, k) int32 token ids;
tokens.i32 (sequences, seq_len) the sequence itself; keys.u64 (sequences,) a 64-bit hash of it.
A training micro-batch (of any rank, any micro-batch size) finds each of its sequences' stream
position by its hash and checks the stored tokens; a sequence the store lacks is an error. The
teacher's output for a sequence depends on that sequence only (causal attention within a row; packed
documents are split at eos within a row), so entries are independent of how sequences are grouped.
The directory is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fastlm.data.inputs import model_inputs
from fastlm.train.errors import ConfigError

FORMAT = 2


def sequence_keys(input_ids: torch.Tensor) -> np.ndarray:
    """A 64-bit hash (BLAKE2b) of each sequence (row) of a (rows, seq_len) batch of token ids."""
    rows = input_ids.detach().cpu().to(torch.int32).numpy()
    return np.array([int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little") for r in rows],
                    dtype=np.uint64)


class TeacherStore:
    def __init__(self, directory: Path, meta: dict):
        self.directory, self.meta = directory, meta
        n, seq_len, k = meta["sequences"], meta["seq_len"], meta["top_k"]
        self.logprobs = np.memmap(directory / "logprobs.f32", dtype=np.float32, mode="r", shape=(n, seq_len, k + 1))
        self.index = np.memmap(directory / "index.i32", dtype=np.int32, mode="r", shape=(n, seq_len, k))
        self.tokens = np.memmap(directory / "tokens.i32", dtype=np.int32, mode="r", shape=(n, seq_len))
        keys = np.fromfile(directory / "keys.u64", dtype=np.uint64)
        self.order = np.argsort(keys, kind="stable")  # stream positions sorted by key: a lookup is a binary search
        self.sorted_keys = keys[self.order]

    @classmethod
    def open(cls, directory: str, section, vocab: int) -> "TeacherStore":
        where = f"distill.teacher_store = {directory!r}"
        path = Path(directory)
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError):
            raise ConfigError(f"{where}: expected a directory written by fastlm distill --save-teacher") from None
        if meta.get("format") != FORMAT:
            raise ConfigError(f"{where}: store format {meta.get('format')!r}, this fastlm reads format {FORMAT} "
                              f"(save the teacher again)")
        if section.top_k not in (0, meta["top_k"]):
            raise ConfigError(f"{where} holds the top-{meta['top_k']} tokens, but distill.top_k = {section.top_k}")
        if float(section.temperature) != meta["temperature"]:
            raise ConfigError(f"{where} was saved at temperature {meta['temperature']}, but distill.temperature = "
                              f"{section.temperature} (the stored log-probabilities depend on it)")
        if vocab != meta["vocab"]:
            raise ConfigError(f"{where}: the teacher's vocabulary has {meta['vocab']} tokens, the student's {vocab}")
        return cls(path, meta)

    def positions(self, input_ids: torch.Tensor) -> np.ndarray:
        """The stream position of each sequence of a (rows, seq_len) micro-batch (ConfigError if absent)."""
        ids = input_ids.detach().cpu().to(torch.int32).numpy()
        if ids.shape[1:] != (self.meta["seq_len"],):
            raise ConfigError(f"distill.teacher_store = {str(self.directory)!r} holds sequences of "
                              f"{self.meta['seq_len']} tokens, the training stream has {ids.shape[1]}")
        keys = sequence_keys(input_ids)
        found = []
        for row, key in zip(ids, keys):
            lo = np.searchsorted(self.sorted_keys, key, side="left")
            hi = np.searchsorted(self.sorted_keys, key, side="right")
            match = [p for p in self.order[lo:hi] if np.array_equal(self.tokens[p], row)]
            if not match:
                raise ConfigError(f"distill.teacher_store = {str(self.directory)!r} has no entry for a sequence of "
                                  f"this micro-batch: the training stream differs from the saved one (same data, "
                                  f"seed, global batch size and seq_len needed, and at most the saved "
                                  f"{self.meta['steps']} steps)")
            found.append(match[0])
        return np.array(found, dtype=np.int64)

    def next(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probabilities (rows, k + 1), token ids (rows, k)) of this micro-batch's tokens, on its device."""
        input_ids = model_inputs(batch)["input_ids"]
        at = self.positions(input_ids)
        k = self.meta["top_k"]
        device = input_ids.device
        return (torch.from_numpy(self.logprobs[at].reshape(-1, k + 1)).to(device),
                torch.from_numpy(self.index[at].reshape(-1, k)).to(device=device, dtype=torch.long))


def save_teacher(config, out_dir: str | Path, show_progress: bool = False) -> Path:
    """Run distill.teacher over the training stream of config (one process); write its top-k store to out_dir."""
    from types import SimpleNamespace

    from fastlm.distill.teacher import load_teacher
    from fastlm.ops.reference_distill import teacher_top_k
    from fastlm.train.data import lm_batches, run_corpus
    from fastlm.train.metrics import progress_bar
    from fastlm.train.runtime import resolve_precision
    from fastlm.train.step import autocast_for, to_device

    s, t = config.distill, config.train
    if not s.teacher:
        raise ConfigError("--save-teacher: set distill.teacher (the teacher to run)")
    if s.top_k < 1:
        raise ConfigError("--save-teacher: set distill.top_k > 0 (the store keeps the top-k tokens and the tail)")
    out = Path(out_dir)
    if out.exists():
        raise ConfigError(f"--save-teacher {str(out)!r}: already exists (choose a new directory)")
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    tokenizer = Path(config.data.tokenizer) if config.data.tokenizer else None
    corpus = run_corpus(config, tokenizer, show_progress)
    teacher = load_teacher(s, corpus.tokenizer_path, None, device)
    vocab = teacher.lm_head.weight.shape[0]
    # The one-process stream: no dp shares; any micro-batch size that divides the global batch (entries are
    # per sequence, so the training run's micro-batch size and dp split need not match).
    one = replace(config, parallel=replace(config.parallel, dp_shares=None),
                  train=replace(t, micro_batch_size=math.gcd(t.global_batch_size, t.micro_batch_size)))
    loader, _ = lm_batches(one, corpus, SimpleNamespace(vocab_size=vocab), 0, 1, None)
    autocast = autocast_for(resolve_precision(t.precision, device), device)
    seq_len, k, n = config.data.seq_len, s.top_k, t.steps * t.global_batch_size
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        logprobs = np.memmap(tmp / "logprobs.f32", dtype=np.float32, mode="w+", shape=(n, seq_len, k + 1))
        index = np.memmap(tmp / "index.i32", dtype=np.int32, mode="w+", shape=(n, seq_len, k))
        tokens = np.memmap(tmp / "tokens.i32", dtype=np.int32, mode="w+", shape=(n, seq_len))
        keys = np.zeros(n, dtype=np.uint64)
        at = 0  # the stream position of the next sequence
        bar = progress_bar(t.steps, 0, show_progress)
        for step in range(t.steps):
            for batch in loader.batch_for_step(step):
                batch = to_device(batch, device)
                inputs = model_inputs(batch)
                ids = inputs["input_ids"]
                rows = ids.shape[0]
                with torch.no_grad(), autocast:
                    hidden = teacher.hidden_states(ids, None, inputs.get("cu_seqlens"))
                    logits = hidden.reshape(rows * seq_len, -1).to(teacher.lm_head.weight.dtype) \
                        @ teacher.lm_head.weight.t()
                lp, top = teacher_top_k(logits, k, float(s.temperature))
                logprobs[at:at + rows] = lp.float().reshape(rows, seq_len, k + 1).cpu().numpy()
                index[at:at + rows] = top.to(torch.int32).reshape(rows, seq_len, k).cpu().numpy()
                tokens[at:at + rows] = ids.to(torch.int32).cpu().numpy()
                keys[at:at + rows] = sequence_keys(ids)
                at += rows
            bar.update(1)
        bar.close()
        for array in (logprobs, index, tokens):
            array.flush()
        keys[:at].tofile(tmp / "keys.u64")
        meta = {"format": FORMAT, "top_k": k, "temperature": float(s.temperature), "vocab": vocab, "seq_len": seq_len,
                "sequences": at, "steps": t.steps, "global_batch_size": t.global_batch_size, "seed": t.seed,
                "teacher": str(s.teacher)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        del logprobs, index, tokens
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        loader.close()
    return out
