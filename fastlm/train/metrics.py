"""RUN_DIR/metrics.jsonl (one JSON object per line) and, when asked for, TensorBoard."""
from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

from tqdm.auto import tqdm


def progress_bar(total: int, initial: int, show: bool) -> tqdm:
    """The steps' progress bar on stderr (throughput and loss go in its postfix)."""
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr, disable=not show)


class MetricsLog:
    def __init__(self, run_dir: Path | None, tensorboard: bool = False):
        self.path = run_dir / "metrics.jsonl" if run_dir is not None else None  # None: not rank 0
        self.writer = None
        if self.path is not None and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("train.tensorboard = true but tensorboard is not installed; "
                              "logging to metrics.jsonl only", stacklevel=2)
            else:
                self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines of steps after the checkpoint (they are about to be redone)."""
        if self.path is None or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, record: dict) -> None:
        if self.path is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _step_of(line: str) -> float:
    """The step of a metrics line; a torn last line (killed mid-write) counts as after everything."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _clean(value):
    # JSON has no NaN/inf; write them as strings rather than produce an unreadable file.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a torn line from a killed run
    return records
