"""The federated tests train micro runs: the trainer tests' session corpus cache (never ~/.cache/fastlm)."""
from tests.train.conftest import fastlm_cache  # noqa: F401  (an autouse session fixture)
