"""The training loop on a micro model: metrics, accumulation, precision, run directories."""
from __future__ import annotations

import json
import math

import pytest
import safetensors.torch
import torch

from fastlm.train import ConfigError, Trainer
from fastlm.train.metrics import read_metrics
from fastlm.train.optim import lr_at
from fastlm.train.run import load_run
from tests.train.train_helpers import micro_config


def _losses(run_dir):
    return [r for r in read_metrics(run_dir) if "loss" in r]


def test_finished_run_directory(finished_run):
    run_dir, summary = finished_run
    for name in ("config.toml", "tokenizer.json", "model.safetensors", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_0000003", "step_0000006"]

    records = read_metrics(run_dir)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]          # log_every = 1
    assert [r["step"] for r in evals] == [0, 3, 6]                   # step 0, eval_every, end
    config = micro_config()
    for r in train:
        assert set(r) >= {"step", "loss", "lr", "grad_norm", "tokens_per_s"}
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, config.train))
        assert math.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["tokens_per_s"] > 0
    for r in evals:
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
    # a randomly initialized model is near uniform over the vocabulary; training improves on it
    assert abs(evals[0]["val_loss"] - math.log(config.model.vocab_size)) < 0.3
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.1
    assert summary["val_loss"] == evals[-1]["val_loss"] and summary["run_dir"] == str(run_dir)

    # the saved model is the trained one, and config.toml rebuilds its architecture
    config, model, _ = load_run(run_dir)
    assert (model.config.n_layer, model.config.n_kv_head, config.train.steps) == (2, 2, 6)
    saved = safetensors.torch.load_file(run_dir / "model.safetensors")
    ckpt = safetensors.torch.load_file(run_dir / "checkpoints" / "step_0000006" / "model.safetensors")
    assert saved.keys() == ckpt.keys() and all(torch.equal(saved[k], ckpt[k]) for k in saved)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """global 4 as 2 micro-batches of 2 == one micro-batch of 4 (loss is the global-batch mean)."""
    common = ["model.dropout=0.0", "train.steps=3", "checkpoint.every=0", "train.eval_every=0"]
    Trainer(micro_config(*common, "train.micro_batch_size=2"), out_dir=tmp_path / "a", show_progress=False).fit()
    Trainer(micro_config(*common, "train.micro_batch_size=4"), out_dir=tmp_path / "b", show_progress=False).fit()
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-4)
    wa = safetensors.torch.load_file(tmp_path / "a" / "model.safetensors")
    wb = safetensors.torch.load_file(tmp_path / "b" / "model.safetensors")
    # Adam divides each gradient by its own RMS: where a gradient is ~0, summation-order noise of the
    # fused kernels (chunked differently for 2 and 4 sequences) moves a weight by a few 1e-5; a real
    # accumulation error would move it by the step size (lr 3e-3) and show in the losses above.
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-4)
    assert not (tmp_path / "a" / "checkpoints").exists()             # checkpoint.every = 0


@pytest.mark.parametrize("clip", [0.01, 0.0])
def test_train_step_clips_the_global_norm_and_averages_micro_batches(clip):
    from fastlm.models import GPT
    from fastlm.parallel import ParallelModel
    from fastlm.train.optim import build_optimizer
    from fastlm.train.step import TrainStep

    config = micro_config(f"train.grad_clip={clip}", "model.dropout=0.0")
    torch.manual_seed(0)
    model = GPT(config.model.architecture())
    optimizer = build_optimizer(model, config.train, torch.device("cpu"))
    norms_at_step = []
    real_step = optimizer.step

    def step(*args, **kwargs):
        grads = [p.grad.norm() for p in model.parameters() if p.grad is not None]
        norms_at_step.append(torch.stack(grads).norm().item())
        return real_step(*args, **kwargs)

    optimizer.step = step
    x1, x2 = torch.randint(0, 320, (2, 2, 32))
    with torch.no_grad():
        expected = (model(x1, labels=x1)[1] + model(x2, labels=x2)[1]) / 2
    train_step = TrainStep(ParallelModel(model), optimizer, device=torch.device("cpu"), grad_clip=clip)
    loss, grad_norm, _ = train_step([x1, x2])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert grad_norm.item() > 0.05                                      # logged: the norm before clipping
    if clip:
        assert norms_at_step[0] == pytest.approx(clip, rel=1e-3)        # what the optimizer saw
    else:
        assert norms_at_step[0] == pytest.approx(grad_norm.item(), rel=1e-5)
    assert all(p.grad is None for p in model.parameters())             # zeroed for the next step


def test_bf16_autocast_on_cpu_trains(tmp_path):
    out = tmp_path / "bf16"
    summary = Trainer(micro_config("train.precision=bf16", "train.steps=2", "checkpoint.every=0"),
                      out_dir=out, show_progress=False).fit()
    assert math.isfinite(summary["val_loss"])
    assert "precision = \"bf16\"" in (out / "config.toml").read_text()


def test_fp16_on_cpu_is_a_config_error():
    with pytest.raises(ConfigError, match='train.precision = "fp16": needs a CUDA GPU'):
        Trainer(micro_config("train.precision=fp16"))


def test_default_run_dir_is_unique_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = micro_config("train.steps=1", "checkpoint.every=0", "train.eval_batches=1")
    first = Trainer(config, show_progress=False).fit()["run_dir"]
    second = Trainer(micro_config("train.steps=1", "checkpoint.every=0", "train.eval_batches=1"),
                     show_progress=False).fit()["run_dir"]
    assert first == "runs/tiny" and second.startswith("runs/tiny-") and second != first
    assert (tmp_path / second / "model.safetensors").is_file()


def test_init_from_a_run_starts_from_its_weights(finished_run, tmp_path):
    run_dir, summary = finished_run
    out = tmp_path / "finetune"
    # a different [model] in the config is replaced by the architecture of init_from
    config = micro_config(f"model.init_from={json.dumps(str(run_dir))}", "model.n_layer=4",
                          "train.steps=1", "checkpoint.every=0")
    Trainer(config, out_dir=out, show_progress=False).fit()
    first_eval = read_metrics(out)[0]
    assert first_eval["step"] == 0
    assert first_eval["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-6)  # same weights, same data
    assert (out / "tokenizer.json").read_bytes() == (run_dir / "tokenizer.json").read_bytes()
    assert "n_layer = 2" in (out / "config.toml").read_text()


def test_init_from_a_hugging_face_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_dir = tmp_path / "hf"
    cfg = transformers.LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(hf_dir)
    out = tmp_path / "from-hf"
    config = micro_config(f"model.init_from={json.dumps(str(hf_dir))}", "train.steps=1", "checkpoint.every=0")
    Trainer(config, out_dir=out, show_progress=False).fit()
    text = (out / "config.toml").read_text()
    assert "n_layer = 1" in text and "d_ff = 64" in text and f"init_from = {json.dumps(str(hf_dir))}" in text


def test_tensorboard_when_asked_for(tmp_path):
    out = tmp_path / "tb"
    config = micro_config("train.tensorboard=true", "train.steps=1", "checkpoint.every=0")
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.warns(UserWarning, match="tensorboard is not installed"):
            Trainer(config, out_dir=out, show_progress=False).fit()
        assert not (out / "tensorboard").exists()
    else:
        Trainer(config, out_dir=out, show_progress=False).fit()
        assert any((out / "tensorboard").iterdir())
    assert (out / "metrics.jsonl").is_file()


@pytest.mark.slow  # inductor compiles the block for about a minute on a CPU
def test_compile_true_equals_the_eager_run(tmp_path):
    from fastlm.train.metrics import read_metrics

    runs = {}
    for flag in ("false", "true"):
        out = tmp_path / flag
        Trainer(micro_config("model.dropout=0.0", f"train.compile={flag}", "checkpoint.every=0"), out_dir=out,
                show_progress=False).fit()
        runs[flag] = [r["loss"] for r in read_metrics(out) if "loss" in r]
    assert runs["true"] == pytest.approx(runs["false"], rel=1e-4)
