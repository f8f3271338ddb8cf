"""The micro training setup the trainer tests share (imported by conftest.py and the tests)."""
from __future__ import annotations

# Small enough that a run takes about a second on one core, big enough to exercise grouped-query
# attention, gradient accumulation (2 micro-batches per step) and dropout (RNG state on resume).
MICRO = [
    "model.n_layer=2", "model.n_head=4", "model.n_kv_head=2", "model.d_model=32", "model.dropout=0.1",
    "data.vocab_size=320", "data.seq_len=32", "data.builtin_modules=[]",
    "train.steps=6", "train.global_batch_size=4", "train.micro_batch_size=2", "train.lr=3e-3",
    "train.warmup_steps=2", "train.min_lr=3e-4", "train.log_every=1", "train.eval_every=3",
    "train.eval_batches=2", "train.precision=fp32", "checkpoint.every=3", "checkpoint.keep=5",
]


def micro_config(*extra: str):
    from fastlm.train import load_config

    return load_config("tiny", [*MICRO, *extra])
