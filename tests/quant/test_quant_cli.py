"""`fastlm quantize RUN_DIR --scheme ... --out DIR`, then `fastlm eval` / `generate` on the result."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from fastlm.cli import main
from tests.test_cli import FASTLM_ROOT, MICRO_TOML


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    config = tmp_path_factory.mktemp("qcli-config") / "micro.toml"
    config.write_text(MICRO_TOML.replace("steps = 4", "steps = 12"))
    out = tmp_path_factory.mktemp("qcli-runs") / "micro"
    assert main(["train", str(config), "--out", str(out), "--quiet"]) == 0
    return out


def eval_ppl(directory, capsys) -> float:
    assert main(["eval", str(directory)]) == 0
    m = re.search(r"val_ppl (\S+)", capsys.readouterr().out)
    return float(m.group(1))


@pytest.mark.parametrize("args,layers", [
    (["--scheme", "w8a8"], 9),
    (["--scheme", "w8a8", "--smooth", "0.5"], 9),
    (["--scheme", "w8a16", "--skip", "lm_head"], 8),
    (["--scheme", "w8a16", "--group-size", "16", "--skip", "blocks.1.*"], 5),
])
def test_quantize_then_eval_and_generate(run_dir, tmp_path, capsys, args, layers):
    base = eval_ppl(run_dir, capsys)
    out = tmp_path / "q"
    assert main(["quantize", str(run_dir), "--out", str(out), *args]) == 0
    printed = capsys.readouterr().out
    assert f"quantized {layers} linear layers" in printed and str(out) in printed
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "model.safetensors", "quantization.json",
                                                      "tokenizer.json", "weights.json"]
    assert len(json.loads((out / "quantization.json").read_text())["modules"]) == layers
    assert not list(tmp_path.glob(".q.tmp-*"))
    assert eval_ppl(out, capsys) == pytest.approx(base, rel=0.05)
    prompt = ["generate", str(out), "--prompt", "The class", "--max-new-tokens", "8", "--seed", "1"]
    assert main(prompt) == 0
    first = capsys.readouterr().out
    assert first.startswith("The class")
    assert main(prompt) == 0 and capsys.readouterr().out == first


def test_in_a_subprocess(run_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(FASTLM_ROOT)}
    p = subprocess.run([sys.executable, "-m", "fastlm", "quantize", str(run_dir), "--scheme", "w8a8", "--out",
                        str(tmp_path / "q")], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([sys.executable, "-m", "fastlm", "quantize", str(run_dir), "--scheme", "w4a4", "--out",
                        str(tmp_path / "q2")], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == ["fastlm: error: --scheme 'w4a4': expected one of w8a8, w8a16"]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("fastlm: error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize("args,message", [
    (["--scheme", "int4"], "--scheme 'int4': expected one of w8a8, w8a16"),
    (["--scheme", "w8a8", "--skip", "lm_haed"], "skip: 'lm_haed' match(es) no Linear module"),
    (["--scheme", "w8a8", "--skip", "*"], "nothing to quantize: every Linear module is skipped"),
    (["--scheme", "w8a8", "--smooth", "1.5"], "smooth = 1.5: expected a migration strength alpha in [0, 1]"),
    (["--scheme", "w8a16", "--smooth", "0.5"], "applies to scheme 'w8a8' only"),
    (["--scheme", "w8a16", "--group-size", "7"], "group_size = 7: expected a positive divisor"),
])
def test_bad_arguments(run_dir, tmp_path, capsys, args, message):
    assert main(["quantize", str(run_dir), "--out", str(tmp_path / "q"), *args]) == 1
    assert message in error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_bad_directories(run_dir, tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "none"), "--scheme", "w8a8", "--out", str(tmp_path / "q")]) == 1
    assert "does not exist" in error_line(capsys)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["quantize", str(run_dir), "--scheme", "w8a8", "--out", str(tmp_path / "full")]) == 1
    assert "already exists and is not empty" in error_line(capsys)

    quantized = tmp_path / "q"
    assert main(["quantize", str(run_dir), "--scheme", "w8a8", "--out", str(quantized)]) == 0
    capsys.readouterr()
    assert main(["quantize", str(quantized), "--scheme", "w8a8", "--out", str(tmp_path / "qq")]) == 1
    assert "is quantized already" in error_line(capsys)
    assert main(["train", str(run_dir / "config.toml"), "--out", str(tmp_path / "t"), "--quiet",
                 "--set", f"model.init_from={quantized}"]) == 1
    assert "a quantized run (int8 weights) cannot be trained" in error_line(capsys)

    damaged = tmp_path / "damaged"
    shutil.copytree(quantized, damaged)
    (damaged / "quantization.json").write_text('{"format": "fastlm-quantization", "version": 1, "modules": '
                                              '{"blocks.0.attn.qkv": {"scheme": "w2"}}}')
    assert main(["eval", str(damaged)]) == 1
    assert "quantization.json: module 'blocks.0.attn.qkv': expected a scheme in w8a8, w8a16" in error_line(capsys)
    (damaged / "quantization.json").write_text("{")
    assert main(["eval", str(damaged)]) == 1
    assert "quantization.json: not valid JSON" in error_line(capsys)
    (damaged / "quantization.json").unlink()  # int8 weights without the record: they do not fit
    assert main(["eval", str(damaged)]) == 1
    assert "does not fit the model in its config.toml" in error_line(capsys)
