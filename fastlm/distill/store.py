"""Offline teachers: the teacher's top-k log-probabilities (and tail mass) for a run's training stream.

    fastlm distill CONFIG --save-teacher DIR      # runs the teacher once over train.steps steps
    fastlm train CONFIG --set distill.teacher_store=DIR --set distill.teacher=""

DIR holds meta.json and two memory-mapped arrays with one entry per micro-batch of the stream (as a
one-process run reads it: BatchLoader.batch_for_step is a pure function of the seed and the step):
logprobs.f32 (micro-batches, rows, k + 1) float32, the teacher's log-probabilities at distill.temperature
of its top-k tokens and of the rest (last), and index.i32 (micro-batches, rows, k) int32 token ids,
rows = micro_batch_size x seq_len. Training finds a micro-batch's entry by the SHA-256 of its tokens
(so resuming and data-parallel ranks find theirs too); a micro-batch the store lacks is an error.
The directory is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from fastlm.data.inputs import model_inputs
from fastlm.train.errors import ConfigError

FORMAT = 1


def batch_key(batch) -> str:
    """The SHA-256 of a micro-batch's tokens (and document offsets, when packed)."""
    inputs = model_inputs(batch)
    h = hashlib.sha256(inputs["input_ids"].detach().cpu().to(torch.int64).numpy().tobytes())
    if inputs.get("cu_seqlens") is not None:
        h.update(inputs["cu_seqlens"].detach().cpu().to(torch.int64).numpy().tobytes())
    return h.hexdigest()


class TeacherStore:
    def __init__(self, directory: Path, meta: dict):
        self.directory, self.meta = directory, meta
        shape = (meta["micro_batches"], meta["rows"])
        k = meta["top_k"]
        self.logprobs = np.memmap(directory / "logprobs.f32", dtype=np.float32, mode="r", shape=(*shape, k + 1))
        self.index = np.memmap(directory / "index.i32", dtype=np.int32, mode="r", shape=(*shape, k))
        self.where = {key: i for i, key in enumerate(meta["keys"])}

    @classmethod
    def open(cls, directory: str, section, vocab: int) -> "TeacherStore":
        where = f"distill.teacher_store = {directory!r}"
        path = Path(directory)
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError):
            raise ConfigError(f"{where}: expected a directory written by fastlm distill --save-teacher") from None
        if meta.get("format") != FORMAT:
            raise ConfigError(f"{where}: unknown store format {meta.get('format')!r}")
        if section.top_k not in (0, meta["top_k"]):
            raise ConfigError(f"{where} holds the top-{meta['top_k']} tokens, but distill.top_k = {section.top_k}")
        if float(section.temperature) != meta["temperature"]:
            raise ConfigError(f"{where} was saved at temperature {meta['temperature']}, but distill.temperature = "
                              f"{section.temperature} (the stored log-probabilities depend on it)")
        if vocab != meta["vocab"]:
            raise ConfigError(f"{where}: the teacher's vocabulary has {meta['vocab']} tokens, the student's {vocab}")
        return cls(path, meta)

    def next(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probabilities (rows, k + 1), token ids (rows, k)) of this micro-batch, on its device."""
        i = self.where.get(batch_key(batch))
        if i is None:
            raise ConfigError(f"distill.teacher_store = {str(self.directory)!r} has no entry for this micro-batch: "
                              f"the training stream differs from the saved one (same data, seed, batch sizes and "
                              f"seq_len needed, and at most the saved number of steps)")
        device = model_inputs(batch)["input_ids"].device
        return (torch.from_numpy(np.array(self.logprobs[i])).to(device),
                torch.from_numpy(np.array(self.index[i])).to(device=device, dtype=torch.long))


def save_teacher(config, out_dir: str | Path, show_progress: bool = False) -> Path:
    """Run distill.teacher over the training stream of config; write its top-k store to out_dir."""
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
    loader, _ = lm_batches(config, corpus, SimpleNamespace(vocab_size=vocab), 0, 1, None)
    autocast = autocast_for(resolve_precision(t.precision, device), device)
    micro = t.global_batch_size // t.micro_batch_size
    rows, k = t.micro_batch_size * config.data.seq_len, s.top_k
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        logprobs = np.memmap(tmp / "logprobs.f32", dtype=np.float32, mode="w+", shape=(t.steps * micro, rows, k + 1))
        index = np.memmap(tmp / "index.i32", dtype=np.int32, mode="w+", shape=(t.steps * micro, rows, k))
        keys = []
        bar = progress_bar(t.steps, 0, show_progress)
        for step in range(t.steps):
            for batch in loader.batch_for_step(step):
                batch = to_device(batch, device)
                inputs = model_inputs(batch)
                with torch.no_grad(), autocast:
                    hidden = teacher.hidden_states(inputs["input_ids"], None, inputs.get("cu_seqlens"))
                    logits = hidden.reshape(rows, -1).to(teacher.lm_head.weight.dtype) @ teacher.lm_head.weight.t()
                lp, ids = teacher_top_k(logits, k, float(s.temperature))
                logprobs[len(keys)] = lp.float().cpu().numpy()
                index[len(keys)] = ids.to(torch.int32).cpu().numpy()
                keys.append(batch_key(batch))
            bar.update(1)
        bar.close()
        logprobs.flush()
        index.flush()
        meta = {"format": FORMAT, "top_k": k, "temperature": float(s.temperature), "vocab": vocab, "rows": rows,
                "micro_batches": len(keys), "teacher": str(s.teacher), "keys": keys}
        (tmp / "meta.json").write_text(json.dumps(meta))
        del logprobs, index
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        loader.close()
    return out
