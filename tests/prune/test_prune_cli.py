"""`fastlm prune RUN_DIR --out DIR ...`, then `fastlm eval` / `generate` / init_from on the result."""
from __future__ import annotations

import json
import re

import pytest
import torch

from fastlm.cli import main
from fastlm.prune import Sparse24Linear
from fastlm.train.run import load_run
from tests.test_cli import MICRO_TOML


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    config = tmp_path_factory.mktemp("prune-config") / "micro.toml"
    config.write_text(MICRO_TOML.replace("steps = 4", "steps = 12"))
    out = tmp_path_factory.mktemp("prune-runs") / "micro"
    assert main(["train", str(config), "--out", str(out), "--quiet"]) == 0
    return out


def eval_ppl(directory, capsys) -> float:
    assert main(["eval", str(directory)]) == 0
    return float(re.search(r"val_ppl (\S+)", capsys.readouterr().out).group(1))


@pytest.mark.parametrize("args,sparsity", [
    (["--sparsity", "0.5"], 0.5),
    (["--sparsity", "0.3", "--scope", "global"], 0.3),
    (["--pattern", "2:4"], 0.5),
])
def test_prune_then_eval(run_dir, tmp_path, capsys, args, sparsity):
    base = eval_ppl(run_dir, capsys)
    out = tmp_path / "p"
    assert main(["prune", str(run_dir), "--out", str(out), *args]) == 0
    printed = capsys.readouterr().out
    assert "pruned 8 linear layers" in printed and str(out) in printed
    change = re.search(r"val_ppl (\S+) -> (\S+)", printed)
    assert float(change.group(1)) == pytest.approx(base, rel=1e-4)
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "model.safetensors", "prune.json",
                                                      "prune_masks.safetensors", "tokenizer.json", "weights.json"]
    record = json.loads((out / "prune.json").read_text())
    assert record["sparsity"] == pytest.approx(sparsity, abs=1e-3) and len(record["layers"]) == 8
    assert not list(tmp_path.glob(".p.tmp-*"))
    pruned = eval_ppl(out, capsys)
    assert pruned == pytest.approx(float(change.group(2)), rel=1e-4)
    assert pruned != pytest.approx(base, rel=1e-6)  # the pruning changed the model
    _, dense, _ = load_run(out)
    zeros = sum(int((m.weight == 0).sum()) for n, m in dense.named_modules() if n.startswith("blocks.") and
                isinstance(m, torch.nn.Linear))
    total = sum(m.weight.numel() for n, m in dense.named_modules() if n.startswith("blocks.") and
                isinstance(m, torch.nn.Linear))
    assert zeros / total == pytest.approx(sparsity, abs=1e-3)
    _, model, _ = load_run(out, sparse=True)  # eval's model: 2:4 runs compute with the compressed kernel on the CPU
    sparse = [m for m in model.modules() if isinstance(m, Sparse24Linear)]
    assert len(sparse) == (8 if "2:4" in args else 0)
    prompt = ["generate", str(out), "--prompt", "The class", "--max-new-tokens", "8", "--seed", "1"]
    assert main(prompt) == 0 and capsys.readouterr().out.startswith("The class")


def test_sparse24_model_matches_dense_pruned(run_dir, tmp_path):
    out = tmp_path / "p24"
    assert main(["prune", str(run_dir), "--out", str(out), "--pattern", "2:4", "--no-eval"]) == 0
    _, dense, _ = load_run(out)
    _, sparse, _ = load_run(out, sparse=True)
    ids = torch.randint(0, 320, (2, 16))
    with torch.no_grad():
        a, b = dense(ids), sparse(ids)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("fastlm: error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize("args,message", [
    (["--sparsity", "1.5"], "--sparsity 1.5: expected a fraction in [0, 1)"),
    ([], "--sparsity None: expected a fraction"),
    (["--pattern", "3:2"], "--pattern '3:2'"),
    (["--pattern", "2:4", "--sparsity", "0.7"], "pattern 2:4 prunes 0.5"),
])
def test_bad_input_is_one_line(run_dir, tmp_path, capsys, args, message):
    assert main(["prune", str(run_dir), "--out", str(tmp_path / "x"), *args]) == 1
    assert message in error_line(capsys)
    assert not (tmp_path / "x").exists()


def test_a_pruned_run_quantizes_and_exports_dense(run_dir, tmp_path, capsys):
    """Other readers (quantize, export) get the plain dense model of a 2:4 run, zeros included."""
    out = tmp_path / "p24"
    assert main(["prune", str(run_dir), "--out", str(out), "--pattern", "2:4", "--no-eval"]) == 0
    assert main(["quantize", str(out), "--scheme", "w8a16", "--out", str(tmp_path / "q")]) == 0
    assert "quantized 9 linear layers" in capsys.readouterr().out
    assert eval_ppl(tmp_path / "q", capsys) > 1
    assert main(["export", str(out), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0


def test_masks_that_do_not_match_the_weights(run_dir, tmp_path, capsys):
    from fastlm.prune import read_pruning, write_pruning

    out = tmp_path / "p24"
    assert main(["prune", str(run_dir), "--out", str(out), "--pattern", "2:4", "--no-eval"]) == 0
    record, masks = read_pruning(out)
    name = sorted(masks)[0]
    masks[name] = ~masks[name]  # prunes the kept weights
    write_pruning(out, masks, record)
    assert main(["eval", str(out)]) == 1
    assert f"pruning mask {name!r} does not match the weights" in error_line(capsys)
    assert main(["train", str(out / "config.toml"), "--set", f"model.init_from={str(out)!r}", "--out",
                 str(tmp_path / "t"), "--quiet"]) == 1
    assert "does not match the weights" in error_line(capsys)
