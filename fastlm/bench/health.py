"""Can a suite's figures be trusted? The machine's load while it ran, and whether its repeats agreed.

A benchmark on a busy machine measures the other processes: threads starved of a core make every
case take the scheduler's time slice, and a ratio of two such timings says nothing. So the harness
samples the load around each suite and checks the spread of every timing the suite took; a suite
that fails either check is flagged (in the summary and in results.json) and its ratios are not
reported as a speedup.

- load average: the 1-minute load average before or after the suite above the cores this process
  may use (the issue's rule; the benchmark's own threads never exceed the cores).
- CPU pressure: Linux's /proc/pressure/cpu "some" counter, the time some runnable task waited for a
  CPU, as a share of the suite's wall time (absent on other systems: then only the load average).
- repeats: a timing whose repeats span more than half its median disagrees; a suite where more than a
  quarter of its timings disagree is flagged.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from fastlm.bench.timing import Measurement

MAX_SPREAD = 0.5       # (max - min) / median of one timing's repeats
MAX_NOISY_SHARE = 0.25  # share of a suite's timings allowed to exceed MAX_SPREAD
MAX_CPU_STALL = 0.25   # share of wall time some task waited for a CPU
PRESSURE_FILE = "/proc/pressure/cpu"


@dataclass
class LoadSample:
    seconds: float             # time.monotonic() when taken
    load_average: float | None  # 1-minute load average
    cpu_stall_us: int | None    # PSI "some" total: microseconds some task waited for a CPU


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def sample() -> LoadSample:
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return LoadSample(time.monotonic(), load, _cpu_stall_us())


def _cpu_stall_us() -> int | None:
    try:
        with open(PRESSURE_FILE) as f:
            for line in f:
                if line.startswith("some "):
                    return int(dict(field.split("=") for field in line.split()[1:])["total"])
    except (OSError, ValueError, KeyError):
        pass
    return None


def assess(timings: list[Measurement], before: LoadSample, after: LoadSample, cores: int) -> dict:
    """The health of one suite's run: `flags` (empty when its figures can be trusted) and what was measured."""
    flags = []
    timed = [m for m in timings if len(m.runs) >= 2]
    noisy = [m for m in timed if m.spread > MAX_SPREAD]
    if timed and len(noisy) > MAX_NOISY_SHARE * len(timed):
        worst = max(noisy, key=lambda m: m.spread)
        flags.append(f"repeats disagree: {len(noisy)} of {len(timed)} timings span more than "
                     f"{MAX_SPREAD:.0%} of their median (worst: {worst.name}, {worst.spread:.0%})")
    loads = [s.load_average for s in (before, after) if s.load_average is not None]
    if loads and max(loads) > cores:
        flags.append(f"busy machine: load average {max(loads):.1f} above the {cores} usable cores")
    stall = None
    if before.cpu_stall_us is not None and after.cpu_stall_us is not None and after.seconds > before.seconds:
        stall = (after.cpu_stall_us - before.cpu_stall_us) / 1e6 / (after.seconds - before.seconds)
        if stall > MAX_CPU_STALL:
            flags.append(f"CPU pressure: runnable tasks waited for a CPU {stall:.0%} of the time")
    return {"flags": flags, "cores": cores, "load_average": loads, "cpu_stall": stall,
            "timings": len(timings), "noisy_timings": len(noisy),
            "worst_spread": max((m.spread for m in timed), default=None)}
