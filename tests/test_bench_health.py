"""Benchmark figures carry their spread, and a suite run on a busy machine or with disagreeing repeats is flagged."""
from __future__ import annotations

import json

import pytest

from fastlm.bench import harness, health, registry
from fastlm.bench.registry import Options, Suite
from fastlm.bench.timing import Measurement, compare, recording, time_callable

QUIET = health.LoadSample(seconds=0.0, load_average=0.5, cpu_stall_us=0)


def _steady(name="t"):
    return Measurement(name, 1.0, [0.98, 1.0, 1.01, 1.02])


def _noisy(name="n"):
    return Measurement(name, 1.0, [0.5, 1.0, 1.0, 2.0])


def test_measurement_spread_and_ratio_range():
    fast, slow = Measurement("a", 1.0, [0.9, 1.0, 1.2]), Measurement("b", 3.0, [2.7, 3.0, 3.3])
    assert (fast.min, fast.max) == (0.9, 1.2) and fast.spread == pytest.approx(0.3)
    ratio = compare(fast, slow)
    assert ratio == pytest.approx(3.0)
    assert ratio.low == pytest.approx(2.7 / 1.2) and ratio.high == pytest.approx(3.3 / 0.9)
    assert ratio.low <= ratio <= ratio.high


def test_recording_collects_every_timing_inside_it():
    with recording() as outer:
        time_callable("one", lambda: None, warmup=0, repeat=3)
        with recording() as inner:
            time_callable("two", lambda: None, warmup=0, repeat=2)
    time_callable("outside", lambda: None, warmup=0, repeat=1)
    assert [m.name for m in outer] == ["one", "two"] and [m.name for m in inner] == ["two"]
    assert len(outer[0].runs) == 3 and outer[0].min <= outer[0].seconds <= outer[0].max


def test_a_quiet_steady_suite_is_not_flagged():
    after = health.LoadSample(seconds=10.0, load_average=1.0, cpu_stall_us=100_000)  # 1% stalled
    verdict = health.assess([_steady(), _steady(), _steady(), _noisy()], QUIET, after, cores=2)  # 1 of 4: allowed
    assert verdict["flags"] == [] and verdict["noisy_timings"] == 1 and verdict["cpu_stall"] == pytest.approx(0.01)


@pytest.mark.parametrize("after, timings, expected", [
    (health.LoadSample(10.0, 1.0, 0), [_noisy(), _noisy(), _steady()], "repeats disagree: 2 of 3"),
    (health.LoadSample(10.0, 3.5, 0), [_steady()], "load average 3.5 above the 2 usable cores"),
    (health.LoadSample(10.0, 1.0, 4_000_000), [_steady()], "waited for a CPU 40%"),
])
def test_busy_or_disagreeing_runs_are_flagged(after, timings, expected):
    flags = health.assess(timings, QUIET, after, cores=2)["flags"]
    assert len(flags) == 1 and expected in flags[0]


def test_missing_pressure_file_falls_back_to_the_load_average(monkeypatch):
    monkeypatch.setattr(health, "PRESSURE_FILE", "/nonexistent/pressure")
    sample = health.sample()
    assert sample.cpu_stall_us is None
    assert health.assess([_steady()], sample, sample, cores=10**6)["flags"] == []


def _fake_suites(monkeypatch, suites: dict):
    monkeypatch.setattr(registry, "SUITE_MODULES", {name: name for name in suites})
    monkeypatch.setattr(harness, "suite_names", lambda: list(suites))
    monkeypatch.setattr(harness, "get_suite", suites.__getitem__)


def _timed_suite(options):
    ours = time_callable("ours", lambda: None, warmup=0, repeat=5)
    theirs = time_callable("theirs", lambda: sum(range(1000)), warmup=0, repeat=5)
    return [{"case": "x", "speedup": compare(ours, theirs)}]


def test_harness_reports_spreads_and_withholds_the_speedup_of_a_busy_run(tmp_path, monkeypatch, capsys):
    _fake_suites(monkeypatch, {"quiet": Suite("quiet", "itself", _timed_suite),
                               "busy": Suite("busy", "itself", _timed_suite)})
    loads = iter([0.1, 0.1, 0.1, 50.0])  # the busy suite ends with a load average of 50
    monkeypatch.setattr(health, "sample", lambda: health.LoadSample(0.0, next(loads), None))
    monkeypatch.setattr(health, "MAX_SPREAD", float("inf"))  # judge only the load here
    results = harness.run_benchmarks(None, Options(), out_dir=tmp_path, plots=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["flagged"] == ["busy"]
    quiet, busy = saved["suites"]["quiet"], saved["suites"]["busy"]
    row = quiet["rows"][0]
    assert row["speedup_low"] <= row["speedup"] <= row["speedup_high"]
    assert [t["name"] for t in quiet["timings"]] == ["ours", "theirs"]
    assert all(t["min_ms"] <= t["median_ms"] <= t["max_ms"] and t["repeats"] == 5 for t in quiet["timings"])
    assert quiet["health"]["flags"] == [] and "load average 50.0" in busy["health"]["flags"][0]
    summary = capsys.readouterr().out.splitlines()
    busy_line = next(line for line in summary if line.lstrip().startswith("busy"))
    assert "FLAGGED" in busy_line and f"{results['suites']['busy']['summary']['median_speedup']:.3g}" not in busy_line
    assert "Not reported as speedups" in summary[-1]
