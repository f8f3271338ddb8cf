"""`fastlm plot RUN_DIR`: training loss and validation loss against the step, as a PNG."""
from __future__ import annotations

from pathlib import Path

from fastlm.train.errors import FastlmError
from fastlm.train.metrics import read_metrics


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise FastlmError(f"{run_dir} has no metrics.jsonl (not a fastlm run directory?)")
    records = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
    val = [(r["step"], r["val_loss"]) for r in records if isinstance(r.get("val_loss"), (int, float))]
    if not train and not val:
        raise FastlmError(f"{run_dir / 'metrics.jsonl'} has no loss values to plot")

    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    out = Path(out) if out is not None else run_dir / "loss.png"
    tmp = out.with_name(out.name + ".tmp.png")
    try:
        fig.savefig(tmp, format="png", bbox_inches="tight")
        tmp.replace(out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out
