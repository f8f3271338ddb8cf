"""`fastlm bench`: suites run, results.json and plots are written, failures are recorded, not fatal."""
from __future__ import annotations

import json

import pytest

from fastlm.bench import harness, registry
from fastlm.bench.registry import Options, Suite
from fastlm.cli import main


def test_list_names_every_suite(capsys):
    assert main(["bench", "--list"]) == 0
    assert capsys.readouterr().out.split() == registry.suite_names()


def test_unknown_benchmark_is_rejected():
    with pytest.raises(ValueError, match="unknown benchmark.*nope"):
        harness.run_benchmarks(["nope"], Options())


def test_every_suite_module_defines_its_suite():
    for name in registry.suite_names():
        try:
            suite = registry.get_suite(name)
        except ImportError as e:  # a suite whose optional dependency is missing here
            pytest.skip(f"{name}: {e}")
        assert isinstance(suite, Suite) and suite.name == name and suite.baseline


def test_norms_run_writes_results_and_plot(tmp_path, monkeypatch):
    from fastlm.bench.suites import norms

    monkeypatch.setattr(norms, "QUICK_SHAPES", [(64, 33)])
    assert main(["bench", "norms", "--quick", "--repeat", "1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    entry = results["suites"]["norms"]
    assert results["environment"]["torch"]
    assert len(entry["rows"]) == 2 * 2 * 2  # {rms, layer} x {fp32, bf16} x {fwd, fwd_bwd}
    assert all(row["speedup"] > 0 and row["case"] for row in entry["rows"])
    assert entry["summary"]["min_speedup"] <= entry["summary"]["median_speedup"] <= entry["summary"]["max_speedup"]
    assert (tmp_path / "norms.png").read_bytes()[:4] == b"\x89PNG"


def test_a_failing_suite_is_recorded_and_the_rest_still_run(tmp_path, monkeypatch):
    def broken(options):
        raise RuntimeError("no such device")

    fake = {"broken": Suite("broken", "nothing", broken),
            "ok": Suite("ok", "itself", lambda options: [{"case": "a", "speedup": 2.0}])}
    monkeypatch.setattr(registry, "SUITE_MODULES", {name: name for name in fake})
    monkeypatch.setattr(harness, "suite_names", lambda: list(fake))
    monkeypatch.setattr(harness, "get_suite", fake.__getitem__)
    results = harness.run_benchmarks(None, Options(), out_dir=tmp_path, plots=False)
    assert "no such device" in results["suites"]["broken"]["error"]
    assert results["suites"]["ok"]["summary"]["median_speedup"] == 2.0
    assert json.loads((tmp_path / "results.json").read_text())["suites"]["ok"]["rows"] == [{"case": "a", "speedup": 2.0}]
