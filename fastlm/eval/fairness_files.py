"""A group report's files: fairness.json (GroupReport.to_dict()) and fairness.png (per-group rates,
and the gaps with their bootstrap intervals), each written to a temporary name and renamed."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from fastlm.eval.fairness import GroupReport


def write_fairness(out_dir: str | Path, report: GroupReport, name: str = "fairness") -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / f"{name}.json", out_dir / f"{name}.png"
    tmp = json_path.with_name(f".{json_path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(report.to_dict(), indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, json_path)
    tmp = png_path.with_name(f".{name}.tmp{os.getpid()}.png")
    plot_fairness(report, tmp)
    os.replace(tmp, png_path)
    return json_path, png_path


def plot_fairness(report: GroupReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    binary = report.positive_label is not None
    keys = ["accuracy", "selection_rate", "tpr", "fpr"] if binary else ["accuracy", "precision", "recall", "f1"]
    if "calibration_error" in report.overall:
        keys.append("calibration_error")
    groups = report.groups
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(keys)
    x = np.arange(len(groups))
    for i, key in enumerate(keys):
        left.bar(x + (i - (len(keys) - 1) / 2) * width, [report.per_group[g][key] for g in groups], width, label=key)
    left.set_xticks(x, [f"{g}\n(n={report.per_group[g]['count']})" for g in groups])
    left.set_ylim(0, 1)
    left.set_title("per group" + (f" (positive class: {report.positive_label})" if binary else ""))
    left.legend(fontsize=7, ncol=len(keys), loc="upper center", bbox_to_anchor=(0.5, -0.18))

    names = list(report.gaps)
    values = [report.gaps[n]["value"] for n in names]
    lows = [report.gaps[n]["ci_low"] for n in names]
    highs = [report.gaps[n]["ci_high"] for n in names]
    y = np.arange(len(names))
    shown = [0.0 if math.isnan(v) else v for v in values]  # NaN (an undefined ratio) drawn as 0
    right.barh(y, shown, color="tab:gray")
    if all(lo is not None for lo in lows):
        err = [[0.0 if math.isnan(lo) else max(0.0, v - lo) for v, lo in zip(shown, lows)],
               [0.0 if math.isnan(hi) else max(0.0, hi - v) for v, hi in zip(shown, highs)]]
        right.errorbar(shown, y, xerr=err, fmt="none", ecolor="black", capsize=3)
        level = f"{round(100 * report.bootstrap['confidence'])}% bootstrap intervals"
    else:
        level = "no bootstrap"
    right.set_yticks(y, [n.replace("_", " ") for n in names], fontsize=8)
    right.invert_yaxis()
    right.set_xlim(0, 1)
    right.set_title(f"gaps between groups ({level})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
