"""`fastlm bench`: run suites, write results.json and PNG plots, print a summary table.

    results = run_benchmarks(["norms", "attention"], Options(device="cpu"), out_dir="bench-out")

A suite that fails (a missing optional package, no GPU) is recorded with its error and the others
still run; the summary says which. Every ratio in the output was measured against its baseline in
the same process, minutes apart at most: absolute times from different runs are not comparable.

Each suite's entry keeps the min / median / max of every timing it took (`timings`), ratios carry
the range their repeats allow (`speedup_low` / `speedup_high`), and `health` says whether the
machine was quiet and the repeats agreed (fastlm.bench.health). A flagged suite's ratios stay in its
rows but are not summarised as a speedup: the summary marks it FLAGGED and results.json lists it
under `flagged`.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from fastlm.bench import health
from fastlm.bench.registry import Options, Suite, get_suite, suite_names
from fastlm.bench.timing import Ratio, print_table, recording


def environment(device: str) -> dict:
    env = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "usable_cores": health.usable_cores(),
        "device": device,
    }
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    try:
        from importlib.metadata import version

        env["fastlm"] = version("fastlm")
    except Exception:  # an uninstalled checkout
        env["fastlm"] = "unknown"
    return env


def json_row(row: dict) -> dict:
    """A row for results.json: a Ratio becomes its value plus `<key>_low` / `<key>_high`."""
    out = {}
    for key, value in row.items():
        out[key] = float(value) if isinstance(value, float) else value
        if isinstance(value, Ratio):
            out[f"{key}_low"], out[f"{key}_high"] = value.low, value.high
    return out


def summarize(suite: Suite, rows: list[dict]) -> dict:
    ratios = [float(r[suite.ratio]) for r in rows if isinstance(r.get(suite.ratio), (int, float))]
    if not ratios:
        return {"cases": len(rows)}
    return {"cases": len(rows), f"median_{suite.ratio}": statistics.median(ratios),
            f"min_{suite.ratio}": min(ratios), f"max_{suite.ratio}": max(ratios)}


def run_benchmarks(names: list[str] | None, options: Options, out_dir: str | os.PathLike | None = None,
                   plots: bool = True) -> dict:
    names = names or suite_names()
    unknown = [n for n in names if n not in suite_names()]
    if unknown:
        raise ValueError(f"unknown benchmark(s): {', '.join(unknown)} (known: {', '.join(suite_names())})")
    if options.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device")
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    results = {"environment": environment(options.device), "quick": options.quick, "suites": {}, "flagged": []}
    for name in names:
        print(f"== {name}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        entry: dict = {}
        try:
            suite = get_suite(name)
            entry["baseline"] = suite.baseline
            if options.device not in suite.devices:
                entry["skipped"] = f"runs on {', '.join(suite.devices)} only"
            else:
                before = health.sample()
                with recording() as timings:
                    rows = suite.run(options)
                verdict = health.assess(timings, before, health.sample(), health.usable_cores())
                entry.update(rows=[json_row(r) for r in rows], summary=summarize(suite, rows), ratio=suite.ratio,
                             timings=[m.summary() for m in timings], health=verdict)
                if verdict["flags"]:
                    results["flagged"].append(name)
                print_table(rows)
                if out and plots and rows:
                    from fastlm.bench.plots import plot_suite

                    entry["plot"] = str(plot_suite(suite, rows, out / f"{name}.png"))
        except Exception as e:  # one failing suite must not lose the others' results
            entry["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        entry["seconds"] = round(time.perf_counter() - start, 1)
        results["suites"][name] = entry
        if out:  # rewritten after every suite: an interrupted run keeps what it measured
            _write_json(out / "results.json", results)
    print_summary(results)
    return results


def print_summary(results: dict) -> None:
    rows = []
    for name, entry in results["suites"].items():
        summary = entry.get("summary", {})
        ratio = entry.get("ratio", "speedup")
        flags = entry.get("health", {}).get("flags")
        shown = {} if flags else summary  # a flagged suite's ratios are not a speedup
        rows.append({"benchmark": name, "baseline": entry.get("baseline", ""), "cases": summary.get("cases"),
                     "ratio": ratio if f"median_{ratio}" in shown else "",
                     "median": shown.get(f"median_{ratio}"), "min": shown.get(f"min_{ratio}"),
                     "max": shown.get(f"max_{ratio}"),
                     "status": entry.get("error") or entry.get("skipped")
                     or (f"FLAGGED: {'; '.join(flags)}" if flags else f"ok ({entry['seconds']} s)")})
    print()
    print_table(rows)
    if results.get("flagged"):
        print(f"\nNot reported as speedups (machine busy or repeats disagreeing): {', '.join(results['flagged'])}. "
              "Rerun them on a quiet machine.")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)
