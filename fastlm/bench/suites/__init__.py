"""Benchmark suites: the measuring code behind `fastlm bench` and the scripts in benchmarks/."""
