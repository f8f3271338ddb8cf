"""Loads the compiled extension fastlm._C, whose import registers the C++ ops (torch.ops.fastlm.*).

Without it fastlm still imports: the CPU ops fall back to their plain-torch references, and a
warning says so once. FASTLM_REQUIRE_NATIVE=1 (set by the tests) turns that into an error so a
test run can never pass on the fallback by accident.
"""
from __future__ import annotations

import os
import warnings

import torch  # noqa: F401  (libtorch must be loaded before the extension)

AVAILABLE = False
IMPORT_ERROR: Exception | None = None

try:
    from fastlm import _C  # noqa: F401

    AVAILABLE = True
except ImportError as error:  # not built, or built against another torch
    IMPORT_ERROR = error
    if os.environ.get("FASTLM_REQUIRE_NATIVE", "0") == "1":
        raise ImportError(
            f"fastlm: FASTLM_REQUIRE_NATIVE=1 but the compiled extension fastlm._C could not be imported ({error}); "
            "rebuild with `pip install --no-build-isolation -e .`"
        ) from error
    warnings.warn(
        f"fastlm: the compiled extension fastlm._C is not available ({error}); CPU kernels fall back to the "
        "plain-torch path (slower). Rebuild with `pip install --no-build-isolation -e .`",
        RuntimeWarning,
        stacklevel=2,
    )
