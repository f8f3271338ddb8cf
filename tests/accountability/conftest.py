"""Fixtures of the accountability tests: a session corpus cache and one finished micro LM run."""
from __future__ import annotations

import pytest

from tests.train.train_helpers import micro_config


@pytest.fixture(scope="session", autouse=True)
def fastlm_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("fastlm-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTLM_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory, fastlm_cache):
    """A finished micro LLaMA-style run (read-only for the tests that use it)."""
    from fastlm.train import Trainer

    out = tmp_path_factory.mktemp("runs") / "micro"
    Trainer(micro_config(), out_dir=out, show_progress=False).fit()
    return out
