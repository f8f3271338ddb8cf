"""Leakage audits of a finished run: membership inference (loss threshold, reference-model
likelihood ratio) and canary exposure. `fastlm privacy audit RUN`; see run.py."""
from fastlm.privacy.audit.run import audit_run, format_table

__all__ = ["audit_run", "format_table"]
