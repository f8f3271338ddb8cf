"""Bias probes for language models: `fastlm fairness probe RUN_DIR [--pairs FILE]` (see probe.py).
(Counterfactual augmentation, the mitigation in the data, is fastlm.data.counterfactual.)"""
from fastlm.fairness.pairs import ProbePair, builtin_pairs_path, read_pairs
from fastlm.fairness.probe import format_table, probe_run, stereotype_rates

__all__ = ["ProbePair", "builtin_pairs_path", "read_pairs", "probe_run", "format_table", "stereotype_rates"]
