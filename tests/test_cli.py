"""The `fastlm` command: train / eval / generate / plot, and one-line errors for bad input.

A few cases run `python -m fastlm` in a subprocess (the real entry point, exit status and
stderr); the rest call fastlm.cli.main in-process, which is the same code and much faster.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastlm
from fastlm.cli import main
from fastlm.train.metrics import read_metrics

# The subprocess imports the same fastlm as this process (the checkout, or the installed package).
FASTLM_ROOT = Path(fastlm.__file__).resolve().parents[1]

# A 2-layer model on the pydoc topics: a few seconds on one core.
MICRO_TOML = """
[model]
family = "llama"
n_layer = 2
n_head = 4
n_kv_head = 2
d_model = 32

[data]
vocab_size = 320
seq_len = 32
builtin_modules = []

[train]
steps = 4
global_batch_size = 4
micro_batch_size = 2
lr = 3e-3
warmup_steps = 1
min_lr = 3e-4
log_every = 1
eval_every = 0
eval_batches = 2
precision = "fp32"

[checkpoint]
every = 2
keep = 2
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cli-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTLM_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def micro_toml(tmp_path_factory, env):
    path = tmp_path_factory.mktemp("cli-config") / "micro.toml"
    path.write_text(MICRO_TOML)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, micro_toml):
    out = tmp_path_factory.mktemp("cli-runs") / "micro"
    assert main(["train", str(micro_toml), "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture
def workdir(tmp_path, monkeypatch, env):
    """An empty current directory, so stray ./runs output would be seen."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _error_line(captured) -> str:
    """The error is one line, the last one on stderr (progress messages may come before it)."""
    lines = captured.err.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == lines[-1:] and lines[-1].startswith("fastlm: error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[-1]


# ------------------------------------------------------------------ the commands work

def test_train_prints_perplexity_and_run_dir(run_dir, capsys):
    for name in ("config.toml", "tokenizer.json", "model.safetensors", "metrics.jsonl"):
        assert (run_dir / name).is_file()
    evals = [r for r in read_metrics(run_dir) if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 4]


def test_eval_matches_the_final_evaluation_of_training(run_dir, capsys):
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    m = re.search(r"val_loss (\S+)\s+val_ppl (\S+)", out)
    assert m, out
    final = [r for r in read_metrics(run_dir) if "val_loss" in r][-1]
    assert math.isfinite(float(m.group(2)))
    assert float(m.group(1)) == pytest.approx(final["val_loss"], abs=1e-4)
    assert float(m.group(2)) == pytest.approx(final["val_ppl"], rel=1e-4)


def test_generate_is_seeded_and_continues_the_prompt(run_dir, capsys):
    args = ["generate", str(run_dir), "--prompt", "The class", "--max-new-tokens", "12", "--seed", "3"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert first.startswith("The class")
    assert main(args[:-2] + ["--temperature", "0", "--top-p", "0.9"]) == 0   # greedy path


def test_plot_writes_a_png(run_dir, tmp_path, capsys):
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "curves.png")]) == 0
    data = (tmp_path / "curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list(tmp_path.glob("*.tmp.png"))


def test_resume_a_finished_run_keeps_its_metrics(run_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert main(["train", str(copy / "config.toml"), "--out", str(copy), "--resume", "--quiet"]) == 0
    assert read_metrics(copy) == read_metrics(run_dir)


# ------------------------------------------------------------------ bad input: subprocess

def _run(args, cwd, env):
    environment = {**os.environ, "PYTHONPATH": str(FASTLM_ROOT), "FASTLM_CACHE": str(env)}
    return subprocess.run([sys.executable, "-m", "fastlm", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("overrides, message", [
    (["train.stpes=5"], "unknown key train.stpes (expected one of: steps,"),
    (["train.global_batch_size=5"], "train.global_batch_size = 5: expected a multiple of train.micro_batch_size"),
    (["data.source=/no/such/corpus.txt"], "data source not found: '/no/such/corpus.txt'"),
])
def test_bad_input_in_a_subprocess(overrides, message, workdir, micro_toml, env):
    sets = [x for o in overrides for x in ("--set", o)]
    p = _run(["train", str(micro_toml), "--out", "out", *sets], workdir, env)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastlm: error: ") and message in lines[0], p.stderr
    assert list(workdir.iterdir()) == []


def test_help_and_usage_errors(workdir, env):
    p = _run(["--help"], workdir, env)
    assert p.returncode == 0 and "train" in p.stdout and "generate" in p.stdout
    p = _run(["generate", "somewhere", "--prompt", "x", "--top-k", "many"], workdir, env)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "fastlm: error: argument --top-k: invalid int value: 'many' (see 'fastlm generate --help')"]


# ------------------------------------------------------------------ bad input: in-process

@pytest.mark.parametrize("args, message", [
    (["--set", 'train.steps="four"'], 'train.steps = "four": expected an integer'),
    (["--set", "train.precision=fp64"], 'train.precision = "fp64": expected one of auto, fp32, bf16, fp16'),
    (["--set", "train.precision=fp16"], 'train.precision = "fp16": needs a CUDA GPU'),
    (["--set", "model.init_from=no-such-dir"], "model.init_from = 'no-such-dir': expected an existing directory"),
    (["--set", "data.seq_len=100000", "--set", "model.max_seq_len=100000"],
     "validation split has"),
    (["--resume"], "--resume: run directory out does not exist"),
])
def test_bad_train_input(args, message, workdir, micro_toml, capsys):
    assert main(["train", str(micro_toml), "--out", "out", *args]) == 1
    assert message in _error_line(capsys.readouterr())
    assert list(workdir.iterdir()) == []


def test_empty_corpus(workdir, micro_toml, capsys):
    (workdir / "data").mkdir()
    (workdir / "data" / "empty.txt").write_text("  \n")
    assert main(["train", str(micro_toml), "--set", "data.source=data"]) == 1   # default ./runs/micro
    assert "empty corpus" in _error_line(capsys.readouterr())
    assert sorted(p.name for p in workdir.iterdir()) == ["data"]


def test_unknown_preset_and_missing_file(workdir, capsys):
    assert main(["train", "tinyy"]) == 1
    line = _error_line(capsys.readouterr())
    assert "config 'tinyy' is neither a TOML file nor a preset (presets: bert-tiny, gpt2-small, " in line
    assert "lstm-tiny" in line and line.endswith(", tiny)")  # every preset, sorted
    assert list(workdir.iterdir()) == []


def test_out_dir_of_another_run_is_not_overwritten(run_dir, micro_toml, capsys):
    before = (run_dir / "metrics.jsonl").read_bytes()
    assert main(["train", str(micro_toml), "--out", str(run_dir)]) == 1
    assert "already exists and is not empty (use --resume" in _error_line(capsys.readouterr())
    assert (run_dir / "metrics.jsonl").read_bytes() == before


def test_failure_before_the_first_step_removes_the_run_dir(workdir, micro_toml, capsys, monkeypatch):
    from fastlm.train.step import TrainStep

    def broken(*args, **kwargs):
        raise ValueError("disk on fire")
    monkeypatch.setattr(TrainStep, "__call__", broken)
    assert main(["train", str(micro_toml), "--out", "nested/out"]) == 1
    assert "disk on fire" in _error_line(capsys.readouterr())
    assert list(workdir.iterdir()) == []                  # also the parent it created


def test_truncated_checkpoint(run_dir, tmp_path, micro_toml, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    opt = copy / "checkpoints" / "step_0000004" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:-10])
    assert main(["train", str(micro_toml), "--out", str(copy), "--resume"]) == 1
    assert re.search(r"step_0000004 is truncated: optimizer.pt has \d+ bytes, expected \d+",
                     _error_line(capsys.readouterr()))


def test_mismatched_checkpoint(run_dir, tmp_path, micro_toml, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert main(["train", str(micro_toml), "--out", str(copy), "--resume", "--set", "model.d_model=64"]) == 1
    assert "does not match this run: model.d_model is 32 there, 64 here" in _error_line(capsys.readouterr())
    assert read_metrics(copy) == read_metrics(run_dir)


def test_prompt_longer_than_the_context(run_dir, capsys):
    assert main(["generate", str(run_dir), "--prompt", "word " * 100]) == 1
    line = _error_line(capsys.readouterr())
    assert re.search(r"the prompt is \d+ tokens, longer than the model's context of 32 tokens", line)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("flag, value, message", [
    ("--top-p", "1.5", "top_p must be in (0, 1]"),
    ("--top-k", "0", "top_k must be >= 1"),
    ("--temperature", "-1", "temperature must be >= 0"),
    ("--max-new-tokens", "-3", "max_new_tokens must be >= 0"),
])
def test_bad_sampling_settings(run_dir, capsys, flag, value, message):
    assert main(["generate", str(run_dir), "--prompt", "The", flag, value]) == 1
    assert message in _error_line(capsys.readouterr())


@pytest.mark.parametrize("command", ["eval", "generate", "plot"])
def test_commands_on_a_missing_run(command, workdir, capsys):
    args = [command, "nowhere"] + (["--prompt", "x"] if command == "generate" else [])
    assert main(args) == 1
    assert "nowhere" in _error_line(capsys.readouterr())
    assert list(workdir.iterdir()) == []


def test_model_weights_that_do_not_fit(run_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    assert main(["eval", str(copy)]) == 1
    assert "model.safetensors is truncated" in _error_line(capsys.readouterr())  # its seal says so
    (copy / "weights.json").unlink()  # a run from before the seal: the weights are read as they are
    assert main(["eval", str(copy)]) == 1
    assert "model.safetensors does not fit the model in its config.toml" in _error_line(capsys.readouterr())


@pytest.mark.parametrize("command", [["eval"], ["generate", "--prompt", "x"], ["export", "--out", "hf"],
                                     ["quantize", "--scheme", "w8a8", "--out", "q"],
                                     ["train", "init-from", "--set", "train.steps=1"]])
def test_one_flipped_byte_in_the_final_weights_is_an_error(command, run_dir, tmp_path, capsys, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-5] ^= 0x01  # inside the last tensor's data: the file still parses
    (copy / "model.safetensors").write_bytes(bytes(weights))
    monkeypatch.chdir(tmp_path)
    if command[0] == "train":  # model.init_from = the damaged run
        args = ["train", str(copy / "config.toml"), "--set", f"model.init_from={str(copy)!r}", *command[2:],
                "--out", "init-from"]
    else:
        args = [command[0], str(copy), *command[1:]]
    assert main(args) == 1
    assert "model.safetensors is corrupted: it does not match the sha256 in weights.json" in \
        _error_line(capsys.readouterr())
