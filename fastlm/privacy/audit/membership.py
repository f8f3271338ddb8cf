"""Membership inference on a language-model run: which token windows it trained on.

Samples (equal counts, drawn from a seed):
  * members: non-overlapping seq_len windows of the run's training split (with its canaries: the
    stream its batches were cut from), a random subset;
  * non-members: non-overlapping seq_len windows of the "evaluation half" of the held-out
    (validation) split. The held-out documents are split at random (a fixed seed, so a reference
    model trained by an earlier audit stays valid) into a "reference half" (the reference model's
    training data) and this evaluation half, so the reference model never saw the non-members it
    scores. Random, not alternating: neighbouring documents are alike (same topic, same file), and
    a reference trained on every other held-out document would know the non-members' neighbours
    better than the members', which reads as membership even for a model that leaks nothing.

Attacks (a higher score means "member"):
  * loss threshold (Yeom et al. 2018): score = -loss_target(x);
  * reference-model likelihood ratio (the offline LiRA of Carlini et al. 2022 with one reference
    model, as in Watson et al. 2022): score = loss_reference(x) - loss_target(x), the reference a
    model of the same config trained on the reference half (or a run given with --reference).
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np

from fastlm.train.errors import FastlmError

REFERENCE_DIR = "audit-reference"        # in the audited run's directory: the reference model it trained
REFERENCE_DATA = "audit-reference-data.jsonl"
SPLIT_SEED = 0x4E1D                       # the random halves of the held-out documents
REFERENCE_RECORDS = 10                   # the reference half goes to the trainer as this many JSONL records


def split_documents(tokens: np.ndarray, eos_id: int) -> list[np.ndarray]:
    """The documents of a token stream (each without its trailing eos)."""
    tokens = np.asarray(tokens)
    ends = np.flatnonzero(tokens == eos_id)
    starts = np.concatenate([[0], ends + 1])
    docs = [tokens[s:e] for s, e in zip(starts, np.concatenate([ends, [tokens.size]]))]
    return [d for d in docs if d.size]


def held_out_halves(val_tokens: np.ndarray, eos_id: int) -> tuple[list[np.ndarray], np.ndarray]:
    """(the reference half's documents, the evaluation half as one stream with eos after each document)."""
    docs = split_documents(val_tokens, eos_id)
    if len(docs) < 2:
        raise FastlmError(f"the validation split has {len(docs)} document(s): the audit needs at least 2 (one to "
                          f"train the reference model, one for non-members); raise data.val_fraction")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(docs))
    reference = [docs[i] for i in sorted(order[:len(docs) // 2])]
    evaluation = [docs[i] for i in sorted(order[len(docs) // 2:])]
    eos = np.array([eos_id], dtype=val_tokens.dtype)
    return reference, np.concatenate([piece for d in evaluation for piece in (d, eos)])


def windows(tokens, seq_len: int, which: np.ndarray) -> np.ndarray:
    """(len(which), seq_len): the non-overlapping windows numbered `which` (window i starts at i * seq_len)."""
    return np.asarray(tokens[which[:, None] * seq_len + np.arange(seq_len)[None, :]], dtype=np.int64)


def choose_samples(train_tokens, eval_tokens, seq_len: int, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(members, non-members): equal counts, at most `samples` each, seeded random subsets of the windows
    (only those are read: the training split may be large)."""
    n_members, n_nonmembers = len(train_tokens) // seq_len, len(eval_tokens) // seq_len
    count = min(samples, n_members, n_nonmembers)
    if count < 2:
        raise FastlmError(f"only {n_nonmembers} held-out window(s) of data.seq_len = {seq_len} tokens for "
                          f"non-members: raise data.val_fraction or use a larger corpus")
    rng = np.random.default_rng([seed, 0xA0D17])
    return (windows(train_tokens, seq_len, np.sort(rng.choice(n_members, count, replace=False))),
            windows(eval_tokens, seq_len, np.sort(rng.choice(n_nonmembers, count, replace=False))))


def train_reference(run_dir: Path, config, corpus, reference_docs: list[np.ndarray], show_progress: bool) -> Path:
    """Train the reference model: the run's config (same model, steps, optimizer, privacy) on the reference
    half, through the normal Trainer; RUN_DIR/audit-reference. A finished one from an earlier audit is reused."""
    from fastlm.train import Trainer

    out = run_dir / REFERENCE_DIR
    if (out / "model.safetensors").is_file():
        print(f"fastlm: reusing the reference model in {out}", flush=True)
        return out
    data = run_dir / REFERENCE_DATA
    tmp = data.with_name(data.name + ".tmp")
    with open(tmp, "w") as f:  # a few big records, so the reference's own validation split is long enough
        for group in np.array_split(np.arange(len(reference_docs)), min(REFERENCE_RECORDS, len(reference_docs))):
            text = "\n\n".join(corpus.decode(reference_docs[i]) for i in group)
            f.write(json.dumps({"text": text}) + "\n")
    os.replace(tmp, data)
    ref = copy.deepcopy(config)
    ref.data.source, ref.data.text_field, ref.data.builtin_modules = str(data), "text", None
    ref.data.tokenizer = str(run_dir / "tokenizer.json")
    ref.data.canaries = 0
    ref.data.val_fraction = max(ref.data.val_fraction, 0.1)
    ref.checkpoint.every = 0
    ref.name = f"{config.name}-reference"
    print(f"fastlm: training the reference model (the run's config, {config.train.steps} steps, on "
          f"{len(reference_docs)} held-out documents) in {out}", flush=True)
    Trainer(ref, out_dir=out, show_progress=show_progress).fit()
    return out
