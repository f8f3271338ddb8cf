"""A session corpus cache for the privacy tests, never the user's ~/.cache/fastlm."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def fastlm_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("fastlm-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTLM_CACHE", str(path))
        yield path
