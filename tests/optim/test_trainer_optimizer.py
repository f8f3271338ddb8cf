"""train.optimizer = "fastlm_adamw" in the trainer: same training as torch's AdamW, exact resume."""
from __future__ import annotations

import shutil

import pytest
import safetensors.torch
import torch

import fastlm.optim.adamw
import fastlm.train.optim
from fastlm.train import Trainer
from fastlm.train.errors import ConfigError
from fastlm.train.metrics import read_metrics
from tests.train.train_helpers import micro_config


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTLM_CACHE", str(tmp_path_factory.mktemp("fastlm-cache")))
        yield


def _fit(out, *extra, resume=False):
    Trainer(micro_config(*extra), out_dir=out, resume=resume, show_progress=False).fit()


def test_fastlm_adamw_trains_like_torch_adamw(tmp_path, monkeypatch):
    calls = []
    real = fastlm.optim.adamw.adamw_step
    monkeypatch.setattr(fastlm.optim.adamw, "adamw_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    _fit(tmp_path / "ours", "train.optimizer=fastlm_adamw")
    assert len(calls) == 6 * 2  # 6 steps, 2 parameter groups (decay, no decay)
    _fit(tmp_path / "default", "train.optimizer=adamw")  # "adamw" on the CPU is fastlm's too
    assert len(calls) == 24
    monkeypatch.setattr(fastlm.train.optim, "has_native_op", lambda name: False)  # torch's AdamW (foreach)
    _fit(tmp_path / "torch", "train.optimizer=adamw")
    assert len(calls) == 24
    a = [r["loss"] for r in read_metrics(tmp_path / "ours") if "loss" in r]
    b = [r["loss"] for r in read_metrics(tmp_path / "torch") if "loss" in r]
    assert len(a) == 6 and a == pytest.approx(b, rel=1e-4)
    wa, wb = (safetensors.torch.load_file(tmp_path / run / "model.safetensors") for run in ("ours", "torch"))
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5, msg=key)


def test_fastlm_adamw_resume_is_exact(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _fit(straight, "train.optimizer=fastlm_adamw")
    shutil.copytree(straight, resumed)  # a run killed after its step-3 checkpoint
    shutil.rmtree(resumed / "checkpoints" / "step_0000006")
    (resumed / "model.safetensors").unlink()
    _fit(resumed, "train.optimizer=fastlm_adamw", resume=True)
    a, b = (read_metrics(run) for run in (straight, resumed))
    assert [r.get("loss") for r in a] == [r.get("loss") for r in b]
    wa, wb = (safetensors.torch.load_file(run / "model.safetensors") for run in (straight, resumed))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_unknown_optimizer_lists_the_choices(tmp_path):
    with pytest.raises(ConfigError, match='train.optimizer = "adam": expected one of adamw, fastlm_adamw, sgd'):
        Trainer(micro_config("train.optimizer=adam"), out_dir=tmp_path / "x", show_progress=False)


def test_optimizer_offload_on_a_cpu_run_is_a_config_error(tmp_path):
    message = r"^train.optimizer_offload = true: needs a CUDA device \(this run is on cpu\)$"
    with pytest.raises(ConfigError, match=message):
        Trainer(micro_config("train.optimizer_offload=true"), out_dir=tmp_path / "x", show_progress=False).fit()


@pytest.mark.parametrize("extra, what", [("train.optimizer=sgd", "sgd"), ("parallel.shard_optimizer=true", "shard"),
                                         ("train.precision=fp16", "fp16")])
def test_optimizer_offload_conflicts_are_config_errors(extra, what):
    with pytest.raises(ConfigError, match=f"train.optimizer_offload = true: not available with .*{what}"):
        micro_config("train.optimizer_offload=true", extra)


@pytest.fixture
def offload_on_cpu(monkeypatch):
    """The offload engine in the trainer with CPU parameters (its device copies become plain copies)."""
    monkeypatch.setattr(fastlm.train.optim, "_check_offload", lambda device: None)
    return "train.optimizer_offload=true"


def test_offload_engine_in_the_trainer_trains_like_adamw(tmp_path, offload_on_cpu, monkeypatch):
    engines = []
    real = fastlm.train.optim.OffloadedAdamW
    monkeypatch.setattr(fastlm.train.optim, "OffloadedAdamW",
                        lambda *a, **k: engines.append(real(*a, **k)) or engines[-1])
    calls, copies = [], []
    real_ready = real._grad_ready

    def counting(self, i, p):
        calls.append(i)
        copies.extend([i] if self._copy_grads else [])
        real_ready(self, i, p)

    monkeypatch.setattr(real, "_grad_ready", counting)
    _fit(tmp_path / "offload", offload_on_cpu)
    assert len(engines) == 1
    # 2 micro-batches per step: TrainStep tells the engine which backward is the last, so each
    # gradient goes to the host once per step
    assert copies and len(calls) == 2 * len(copies) and len(copies) == 6 * len(set(copies))
    _fit(tmp_path / "plain", "train.optimizer=fastlm_adamw")
    a, b = ([r["loss"] for r in read_metrics(tmp_path / run) if "loss" in r] for run in ("offload", "plain"))
    assert len(a) == 6 and a == pytest.approx(b, rel=1e-5)
    wa, wb = (safetensors.torch.load_file(tmp_path / run / "model.safetensors") for run in ("offload", "plain"))
    for key in wa:  # the gradient norm sums in another order: float tolerance, not bit-exact
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6, msg=key)


def test_offload_engine_resume_is_exact(tmp_path, offload_on_cpu):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _fit(straight, offload_on_cpu)
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000006")
    (resumed / "model.safetensors").unlink()
    _fit(resumed, offload_on_cpu, resume=True)
    assert [r.get("loss") for r in read_metrics(straight)] == [r.get("loss") for r in read_metrics(resumed)]
    wa, wb = (safetensors.torch.load_file(run / "model.safetensors") for run in (straight, resumed))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_adamw_picks_the_implementation_the_parameters_allow():
    """"adamw" on the CPU is fastlm's AdamW for fp32 / bf16 parameters, torch's for fp64 (no native kernel)."""
    train = micro_config().train
    cpu = torch.device("cpu")
    fp32 = fastlm.train.optim.build_optimizer(torch.nn.Linear(4, 3), train, cpu)
    fp64 = fastlm.train.optim.build_optimizer(torch.nn.Linear(4, 3).double(), train, cpu)
    assert isinstance(fp32, fastlm.optim.adamw.AdamW) and type(fp64) is torch.optim.AdamW
