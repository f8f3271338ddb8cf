"""Test-wide setup: the compiled extension is required (no silent pass on the plain-torch fallback)."""
import os

os.environ.setdefault("FASTLM_REQUIRE_NATIVE", "1")
# The tests start their own launches: none inherits a launcher's rank or a debug switch.
for _name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "FASTLM_DEBUG"):
    os.environ.pop(_name, None)

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# Prepared corpora go to a cache of this test session (inherited by spawned processes and
# torchrun workers), never the user's ~/.cache/fastlm. Tests that need their own override it.
_cache = tempfile.mkdtemp(prefix="fastlm-test-cache-")
os.environ["FASTLM_CACHE"] = _cache
atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    # Triton kernels run interpreted on CPU, in their own pytest process (see Makefile).
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    for item in items:
        if "triton" in item.keywords and not interpreted:
            item.add_marker(pytest.mark.skip(reason="Triton tests run in their own process with TRITON_INTERPRET=1"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
