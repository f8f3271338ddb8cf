"""A rank that dies or hangs makes the others fail within timeout_s, naming the rank and the collective."""
from __future__ import annotations

import pytest

from tests.parallel import workers
from tests.parallel.dist_helpers import run_world


@pytest.mark.parametrize("mode", ["kill", "hang"])
def test_survivors_fail_with_a_message_naming_the_rank(mode):
    timeout_s = 4
    results = run_world(workers.fault_probe, 2, mode, timeout_s, timeout=60, allow_errors=True)
    survivor = results[0]["ok"]
    assert survivor["step"] == 2, survivor
    message = survivor["error"]
    assert "CollectiveError" in message and "rank 1" in message, message
    assert "gradient bucket" in message, message
    if mode == "hang":
        assert "did not reach it" in message, message
    else:
        assert "not responding" in message or "unreachable" in message, message
    assert survivor["seconds"] < timeout_s + 8, survivor
