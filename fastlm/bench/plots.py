"""PNG plots of a suite's rows: speed-up per case (bars), or a column against sequence length (lines)."""
from __future__ import annotations

from pathlib import Path

from fastlm.bench.registry import Suite


def plot_suite(suite: Suite, rows: list[dict], path: Path) -> Path:
    if suite.plot is not None:
        return suite.plot(rows, path)
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    if suite.plot_x:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [r[suite.plot_x] for r in rows]
        for column in suite.plot_y:
            ax.plot(xs, [r.get(column) for r in rows], marker="o", label=column)
        ax.set_xlabel(suite.plot_x)
        ax.set_ylabel(", ".join(suite.plot_y))
        ax.legend()
    else:
        cases = [str(r.get("case", i)) for i, r in enumerate(rows)]
        values = [float(r.get(suite.ratio) or 0.0) for r in rows]
        fig, ax = plt.subplots(figsize=(7, max(3, 0.28 * len(rows) + 1)))
        ax.barh(range(len(rows)), values, color=["tab:green" if _better(suite, v) else "tab:red" for v in values])
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(rows)), cases, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"{suite.ratio} vs {suite.baseline}")
    ax.set_title(suite.name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _better(suite: Suite, value: float) -> bool:
    return value >= 1.0 if suite.ratio == "speedup" else value <= 1.0
