"""`fastlm train lstm-tiny` (and gru, rnn) in micro size: the trainer's step, checkpoints and resume,
`fastlm eval`, `fastlm generate`, and data.stateful (truncated BPTT over consecutive windows)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import safetensors.torch
import torch

from fastlm.cli import main
from fastlm.data.stream_loader import StreamLoader
from fastlm.train import Trainer, load_config
from fastlm.train.errors import ConfigError
from fastlm.train.metrics import read_metrics

MICRO = ["model.n_layer=2", "model.d_model=32", "model.dropout=0.1",
         "data.vocab_size=320", "data.seq_len=32", "data.builtin_modules=[]",
         "train.steps=6", "train.global_batch_size=4", "train.micro_batch_size=2", "train.lr=3e-3",
         "train.warmup_steps=2", "train.min_lr=3e-4", "train.log_every=1", "train.eval_every=3",
         "train.eval_batches=2", "train.precision=fp32", "checkpoint.every=3", "checkpoint.keep=5"]


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory, fastlm_cache):
    out = tmp_path_factory.mktemp("runs") / "lstm"
    summary = Trainer(load_config("lstm-tiny", MICRO), out_dir=out, show_progress=False).fit()
    return out, summary


def test_lstm_run_trains_and_resumes_exactly(lstm_run, tmp_path):
    straight, summary = lstm_run
    rows = read_metrics(straight)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert summary["val_loss"] < np.log(320)  # better than uniform over the vocabulary
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000006")
    (resumed / "model.safetensors").unlink()
    Trainer(load_config("lstm-tiny", MICRO), out_dir=resumed, resume=True, show_progress=False).fit()
    a, b = read_metrics(straight), read_metrics(resumed)
    for ra, rb in zip(a, b):
        for key in ("loss", "grad_norm", "val_loss"):
            assert ra.get(key) == rb.get(key), (ra["step"], key)
    wa = safetensors.torch.load_file(straight / "model.safetensors")
    wb = safetensors.torch.load_file(resumed / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert "rnn.weight_hh_l1" in wa  # torch.nn.LSTM's parameter names


def test_eval_and_generate_on_an_lstm_run(lstm_run, capsys):
    out, summary = lstm_run
    assert main(["eval", str(out)]) == 0
    assert f"val_loss {summary['val_loss']:.4f}" in capsys.readouterr().out
    args = ["generate", str(out), "--prompt", "The function", "--max-new-tokens", "12", "--seed", "3"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("The function") and len(first) > len("The function")
    assert main(args) == 0
    assert capsys.readouterr().out == first  # seeded


@pytest.mark.parametrize("family", ["gru", "rnn"])
def test_other_families_train(family, tmp_path, fastlm_cache):
    summary = Trainer(load_config("gru-tiny", [*MICRO, f"model.family=\"{family}\"", "train.steps=3"]),
                      out_dir=tmp_path / family, show_progress=False).fit()
    assert np.isfinite(summary["val_loss"]) and summary["val_loss"] < np.log(320) + 1


def test_stateful_run_carries_state_across_consecutive_windows(tmp_path, fastlm_cache):
    config = load_config("lstm-tiny", [*MICRO, "data.stateful=true", "train.steps=3"])
    summary = Trainer(config, out_dir=tmp_path / "stateful", show_progress=False).fit()
    assert np.isfinite(summary["val_loss"])


def test_stream_loader_rows_continue_each_other():
    tokens = np.arange(1000)
    for world in (1, 2):
        for rank in range(world):
            loader = StreamLoader(tokens, seq_len=8, global_batch_size=8, micro_batch_size=2, seed=0, rank=rank,
                                  world_size=world, prefetch=0)
            micro = [mb for step in range(3) for mb in loader.batch_for_step(step)]
            for prev, nxt in zip(micro, micro[1:]):
                assert torch.equal(nxt[:, 0], prev[:, -1] + 1)  # row i continues row i
            streams = 2 * world
            assert int(micro[0][0, 0]) == rank * 2 * (1000 // streams)


def test_stateful_needs_a_recurrent_family():
    with pytest.raises(ConfigError, match="data.stateful"):
        load_config("tiny", ["data.stateful=true"])
