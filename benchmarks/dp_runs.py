"""Shared by the data-parallel strategy benchmarks: a small model trained by `torchrun -m fastlm train`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fastlm.train.metrics import read_metrics

SEQ_LEN = 64
MODEL = ["model.n_layer=2", "model.d_model=128", "model.n_head=4", "model.n_kv_head=2", f"data.seq_len={SEQ_LEN}",
         "data.vocab_size=1024", "data.builtin_modules=[]", "train.precision=\"fp32\"", "train.eval_batches=4",
         "checkpoint.every=0", "train.log_every=1", "model.dropout=0.0"]


def train(out: Path, sets: list[str], env: dict[str, str] | None = None, nproc: int = 2) -> list[dict]:
    """Runs `fastlm train tiny` over `nproc` processes with MODEL + sets; returns its metrics lines."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    args = [a for item in [*MODEL, *sets] for a in ("--set", item)]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--nproc-per-node", str(nproc), "-m", "fastlm", "train", "tiny", "--out", str(out), "--quiet",
           *args]
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return read_metrics(out)
