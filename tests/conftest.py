"""Test-wide setup: the compiled extension is required (no silent pass on the plain-torch fallback)."""
import os

os.environ.setdefault("FASTLM_REQUIRE_NATIVE", "1")

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
