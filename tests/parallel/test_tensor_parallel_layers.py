"""Tensor-parallel layers and collectives (2 gloo processes): each against its tp = 1 counterpart
or its definition, forward and backward, float64, odd sizes."""
import pytest

from tests.parallel import tp_workers
from tests.parallel.dist_helpers import run_world

COLLECTIVES = ["copy", "reduce", "scatter", "gather", "seq scatter", "seq gather", "seq reduce-scatter"]
LAYERS = ["column (gate|up)", "column gathered", "row", "row seq-parallel", "gqa qkv", "embedding", "cross-entropy"]


@pytest.fixture(scope="module")
def errors():
    return run_world(tp_workers.layer_checks, 2, timeout=120)


@pytest.mark.parametrize("name", COLLECTIVES)
def test_collective_matches_its_definition(errors, name):
    for rank, errs in enumerate(errors):
        for direction in ("fwd", "bwd"):
            assert errs[f"{name} {direction}"] < 1e-12, (rank, name, direction, errs[f"{name} {direction}"])


@pytest.mark.parametrize("name", LAYERS)
def test_layer_matches_tp1(errors, name):
    for rank, errs in enumerate(errors):
        mine = {k: v for k, v in errs.items() if k.startswith(name)}
        assert mine, f"no checks for {name}"
        tol = 1e-6 if name == "cross-entropy" else 1e-10
        for k, v in mine.items():
            assert v < tol, (rank, k, v)


def test_dropout_randomness():
    same, different, default_differs = run_world(tp_workers.dropout_checks, 2, timeout=60)[0]
    assert same and different and default_differs
