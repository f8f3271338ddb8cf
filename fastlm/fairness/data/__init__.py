"""The built-in probe set (probe_pairs.csv), written by `python -m fastlm.fairness.data.generate`."""
