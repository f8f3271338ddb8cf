"""The benchmark harness: time callables the same way and report ratios against a baseline
measured in the same run (shared machines are noisy; absolute numbers from different runs are not
comparable). Benchmarks are scripts in benchmarks/ built on this; they never gate CI."""
from fastlm.bench.timing import Measurement, compare, print_table, time_callable

__all__ = ["Measurement", "time_callable", "compare", "print_table"]
