"""Fixtures for the trainer tests: a session corpus cache and one finished micro run."""
from __future__ import annotations

import pytest

from tests.train.train_helpers import micro_config


@pytest.fixture(scope="session", autouse=True)
def fastlm_cache(tmp_path_factory):
    """One corpus cache for the session, never the user's ~/.cache/fastlm."""
    path = tmp_path_factory.mktemp("fastlm-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTLM_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, fastlm_cache):
    """A finished micro run (read-only for the tests that use it)."""
    from fastlm.train import Trainer

    out = tmp_path_factory.mktemp("runs") / "micro"
    summary = Trainer(micro_config(), out_dir=out, show_progress=False).fit()
    return out, summary
