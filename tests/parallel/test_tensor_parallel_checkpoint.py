"""Resharding checkpoints (torch.distributed.checkpoint): saved at one (dp, tp), loaded at another
(tp 2 -> 1 on one process, 1 -> 2, dp 2 x tp 2 -> tp 2), training continues with the losses and
parameters of an uninterrupted run; layout errors name what divides what."""
import pytest
import torch

from tests.parallel import tp_workers
from tests.parallel.dist_helpers import run_world

STEPS, SAVE_AT = 3, 2


@pytest.fixture(scope="module")
def uninterrupted():
    return run_world(tp_workers.train, 1, {"family": "llama", "steps": STEPS}, timeout=120)[0]


@pytest.mark.parametrize("save_world,save_tp,load_world,load_tp", [
    (2, 2, 1, 1),      # tp 2 -> one process
    (1, 1, 2, 2),      # one process -> tp 2 (sequence parallel on)
    pytest.param(4, 2, 2, 2, marks=pytest.mark.slow),      # dp 2 x tp 2 -> tp 2
])
def test_reshard_and_continue(tmp_path, uninterrupted, save_world, save_tp, load_world, load_tp):
    ckpt = str(tmp_path / "ckpt")
    base = {"family": "llama", "steps": STEPS}
    saved = run_world(tp_workers.train, save_world, {**base, "tp": save_tp, "save_at": SAVE_AT, "save_to": ckpt},
                      timeout=240)[0]
    resumed = run_world(tp_workers.train, load_world, {**base, "tp": load_tp, "sp": load_tp > 1,
                                                       "load_from": ckpt}, timeout=240)
    assert saved["losses"] == pytest.approx(uninterrupted["losses"], abs=2e-5)
    for got in resumed:
        assert got["losses"] == pytest.approx(uninterrupted["losses"][SAVE_AT:], abs=2e-5)
        for k, v in uninterrupted["params"].items():
            torch.testing.assert_close(got["params"][k], v, atol=2e-5, rtol=1e-4)


def test_round_trip_is_exact(tmp_path):
    """tp 2 -> one process -> tp 2: the parameters come back bit for bit."""
    first = run_world(tp_workers.round_trip, 2, str(tmp_path), "save", timeout=120)[0]
    plain = run_world(tp_workers.round_trip, 1, str(tmp_path), "plain", timeout=120)[0]
    back = run_world(tp_workers.round_trip, 2, str(tmp_path), "load", timeout=120)[0]
    for k, v in first.items():
        assert torch.equal(plain[k], v), k
        assert torch.equal(back[k], v), k


def test_bad_layouts_name_what_divides_what():
    from fastlm.models import GPTConfig
    from fastlm.parallel.tensor import check_tp_layout

    cases = [
        (dict(n_head=6, d_model=48), 4, "does not divide model.n_head = 6"),
        (dict(family="llama", n_head=8, n_kv_head=2, d_model=64, d_ff=96), 3, "does not divide model.n_head"),
        (dict(family="llama", n_head=12, n_kv_head=4, d_model=96, d_ff=96), 6, "model.n_kv_head = 4: one must divide"),
        (dict(n_head=4, d_model=32, d_ff=30), 4, "does not divide model.d_ff = 30"),
        (dict(n_head=4, d_model=32, vocab_size=5), 4, "model.vocab_size = 5 is too small"),
    ]
    for over, tp, message in cases:
        with pytest.raises(ValueError, match=message):
            check_tp_layout(GPTConfig(**{"vocab_size": 64, **over}), tp)
    with pytest.raises(ValueError, match="does not divide the sequence length 30"):
        check_tp_layout(GPTConfig(vocab_size=64, n_head=4, d_model=32), 4, sequence_parallel=True, seq_len=30)
    check_tp_layout(GPTConfig(family="llama", vocab_size=67, n_head=8, n_kv_head=2, d_model=64, d_ff=96), 4)


def test_config_and_world_size_errors(monkeypatch):
    from fastlm.parallel import MeshError, init_mesh
    from fastlm.train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="parallel.tp = 3 does not divide model.n_head = 8"):
        load_config("tiny", ["parallel.tp=3"])
    with pytest.raises(ConfigError, match="does not divide the sequence length"):
        load_config("tiny", ["parallel.tp=2", "parallel.sequence_parallel=true", "data.seq_len=127"])
    monkeypatch.setenv("WORLD_SIZE", "6")
    with pytest.raises(MeshError, match="world size 6 is not divisible by tp \\* pp = 4 \\* 1"):
        init_mesh(tp=4)
    with pytest.raises(MeshError, match="dp \\* tp \\* pp = 2 \\* 2 \\* 1 = 4, but there are 6 processes"):
        init_mesh(dp=2, tp=2)
