"""Federated rounds against plain PyTorch: one client equals centralised training, FedAvg with IID clients and one
local step equals one data-parallel step, FedProx's proximal gradient, user-level DP, and torchrun (2 processes)
equal to one process simulating every client."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from fastlm.data.inputs import model_inputs
from fastlm.federated.run import client_datasets
from fastlm.federated.server import client_dp_epsilon
from fastlm.train import Trainer, load_config
from fastlm.train.data import run_corpus
from fastlm.train.errors import ConfigError
from fastlm.train.metrics import read_metrics
from fastlm.train.optim import build_optimizer, lr_at
from fastlm.train.run import build_model
from tests.parallel.dist_helpers import free_port

MICRO = ["model.n_layer=2", "model.n_head=4", "model.n_kv_head=2", "model.d_model=32", "data.vocab_size=320",
         "data.seq_len=32", "data.builtin_modules=[]", "train.global_batch_size=4", "train.micro_batch_size=2",
         "train.lr=3e-3", "train.warmup_steps=1", "train.eval_batches=2", "train.precision=fp32", "train.log_every=1"]


def _config(*extra):
    return load_config("tiny", [*MICRO, *extra])


def _fit(out, *extra):
    Trainer(_config(*extra), out_dir=out, show_progress=False).fit()
    return safetensors.torch.load_file(Path(out) / "model.safetensors")


def _reference_model(config):
    torch.manual_seed(config.train.seed)
    return build_model(config)


def _loss(model, micro_batches):
    return sum(model(**model_inputs(mb))[1] for mb in micro_batches) / len(micro_batches)


def _assert_same(weights, model, atol=1e-6):
    state = model.state_dict()
    for key, value in weights.items():
        torch.testing.assert_close(value, state[key], atol=atol, rtol=1e-5, msg=key)


def test_one_client_keep_state_equals_centralised_training(tmp_path):
    extra = ["federated.clients=1", "federated.rounds=4", "federated.local_steps=1", "federated.client_state=\"keep\"",
             "train.grad_clip=0.5"]
    weights = _fit(tmp_path / "fed", *extra)
    config = _config(*extra)
    model = _reference_model(config)
    (data,) = client_datasets(config, run_corpus(config, None))
    optimizer = build_optimizer(model, config.train, torch.device("cpu"))  # AdamW, its state kept throughout
    schedule = config.train.__class__(**{**config.train.__dict__, "steps": 4})
    for step in range(4):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, schedule)
        _loss(model, data.batch(step)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        optimizer.zero_grad()
    _assert_same(weights, model)


@pytest.mark.parametrize("clients", [2, 3])
def test_fedavg_iid_one_local_step_equals_data_parallel_sgd(tmp_path, clients):
    """K clients each take one SGD step from w: w - lr * sum_k n_k g_k / sum_k n_k, one data-parallel step on the
    union of their batches (each client's mean loss weighted by its sample count, as dp_shares weights ranks)."""
    extra = [f"federated.clients={clients}", "federated.rounds=3", "federated.partition=\"iid\"",
             "train.optimizer=\"sgd\"", "train.lr=0.5", "train.grad_clip=0", "train.weight_decay=0"]
    weights = _fit(tmp_path / "fed", *extra)
    config = _config(*extra)
    model = _reference_model(config)
    data = client_datasets(config, run_corpus(config, None))
    sizes = torch.tensor([d.num_samples for d in data], dtype=torch.float64)
    schedule = config.train.__class__(**{**config.train.__dict__, "steps": 3})
    for step in range(3):
        loss = sum(float(n / sizes.sum()) * _loss(model, d.batch(step)) for n, d in zip(sizes, data))
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr_at(step, schedule) * p.grad
                p.grad = None
    _assert_same(weights, model, atol=2e-6)


def test_fedprox_adds_the_proximal_gradient(tmp_path):
    """Two local SGD steps: the second sees grad + mu * (w - w_global) (zero at the first)."""
    extra = ["federated.clients=1", "federated.rounds=1", "federated.local_steps=2", "federated.algorithm=\"fedprox\"",
             "federated.mu=0.7", "train.optimizer=\"sgd\"", "train.lr=0.3", "train.grad_clip=0",
             "train.weight_decay=0", "train.warmup_steps=0", "train.min_lr=0.3"]
    weights = _fit(tmp_path / "fed", *extra)
    config = _config(*extra)
    model = _reference_model(config)
    anchor = [p.detach().clone() for p in model.parameters()]
    (data,) = client_datasets(config, run_corpus(config, None))
    for step in range(2):
        _loss(model, data.batch(step)).backward()
        with torch.no_grad():
            for p, w0 in zip(model.parameters(), anchor):
                p -= 0.3 * (p.grad + 0.7 * (p - w0))
                p.grad = None
    _assert_same(weights, model)
    plain = _fit(tmp_path / "avg", *[e for e in extra if "fedprox" not in e])
    assert any(not torch.allclose(plain[k], weights[k]) for k in weights)


def test_reset_and_keep_differ_and_clients_go_on_through_their_data(tmp_path):
    base = ["federated.clients=2", "federated.rounds=3", "federated.local_steps=2"]
    keep = _fit(tmp_path / "keep", *base, "federated.client_state=\"keep\"")
    reset = _fit(tmp_path / "reset", *base, "federated.client_state=\"reset\"")
    assert any(not torch.allclose(keep[k], reset[k]) for k in keep)
    config = _config(*base)
    data = client_datasets(config, run_corpus(config, None))
    seen = [set(d.batch_windows(s).tolist()) for d in data for s in range(6)]
    assert all(len(s) == 4 for s in seen)
    assert not set().union(*seen[:6]) & set().union(*seen[6:])  # the clients' windows are disjoint


def test_metrics_record_rounds_and_client_dp_epsilon(tmp_path):
    extra = ["federated.clients=4", "federated.clients_per_round=2", "federated.rounds=3", "federated.eval_every=2",
             "federated.client_dp={clip = 0.1, noise_multiplier = 1.0}"]
    _fit(tmp_path / "dp", *extra)
    lines = read_metrics(tmp_path / "dp")
    rounds = [r for r in lines if "loss" in r]
    evals = [r for r in lines if "val_loss" in r]
    assert [r["round"] for r in rounds] == [1, 2, 3] and [r["round"] for r in evals] == [0, 2, 3]
    assert all(r["clients"] == 2 for r in rounds)
    dp = load_config("tiny", [*MICRO, *extra]).federated.client_dp
    assert rounds[-1]["epsilon"] == pytest.approx(client_dp_epsilon(dp, clients=4, per_round=2, rounds=3))
    assert 0 < rounds[0]["epsilon"] < rounds[-1]["epsilon"]


def test_client_dp_clips_every_update_and_adds_calibrated_noise():
    from fastlm.federated.config import ClientDPSection
    from fastlm.federated.server import contribution, global_update

    dp = ClientDPSection(clip=0.5, noise_multiplier=0.0)
    big, small = torch.full((100,), 1.0), torch.full((100,), 0.001)
    total = contribution(big, 10, dp) + contribution(small, 99, dp)
    assert total[-1] == 2  # equal weights under user-level DP
    torch.testing.assert_close(total[:-1], (big * 0.5 / 10 + small).double())  # the big update clipped to norm 0.5
    torch.testing.assert_close(global_update(total, client_dp=dp, per_round=2, seed=0, round_index=0), total[:-1] / 2)
    noisy = ClientDPSection(clip=0.5, noise_multiplier=2.0)
    zeros = torch.zeros(200001, dtype=torch.float64)
    zeros[-1] = 4
    step = global_update(zeros, client_dp=noisy, per_round=4, seed=0, round_index=1)
    assert step.std().item() == pytest.approx(2.0 * 0.5 / 4, rel=0.01)
    plain = torch.tensor([3.0, 6.0, 3.0], dtype=torch.float64)  # [sum w u, sum w] without DP: the weighted mean
    torch.testing.assert_close(global_update(plain, client_dp=None, per_round=2, seed=0, round_index=0),
                               torch.tensor([1.0, 2.0], dtype=torch.float64))


@pytest.mark.parametrize("override,message", [
    (["federated.clients=-1"], "federated.clients = -1"),
    (["federated.clients=4", "federated.clients_per_round=5"], "federated.clients_per_round = 5"),
    (["federated.clients=4", "federated.algorithm=\"scaffold\""], "federated.algorithm = \"scaffold\""),
    (["federated.clients=4", "federated.partition=\"label\""], "federated.partition = \"label\""),
    (["federated.clients=4", "federated.alpha=0"], "federated.alpha = 0"),
    (["federated.clients=4", "federated.dropout=0.1"], "set federated.secure_aggregation = true"),
    (["federated.clients=4", "federated.client_dp={clip = 0}"], "federated.client_dp.clip = 0"),
    (["federated.clients=4", "federated.client_dp={clip = 1, sigma = 2}"], "unknown key federated.sigma"),
    (["federated.clients=4", "parallel.pp=2"], "federated training does not combine with parallel.pp > 1"),
    (["federated.clients=4", "privacy.dp_sgd=true", "privacy.noise_multiplier=1"], "use federated.client_dp"),
    (["train.optimizer=\"lion\""], "train.optimizer = \"lion\""),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("tiny", [*MICRO, *override])


def test_encoders_are_refused():
    from fastlm.train.config import Config

    with pytest.raises(ConfigError, match="federated training is for causal language models"):
        Config.from_dict({"model": {"family": "bert"}, "federated": {"clients": 4}})


def test_files_partition_gives_each_file_to_a_client(tmp_path):
    words = [" ".join(f"w{f}x{i % 17} tok{(i * 7) % 23}" for i in range(600)) for f in range(3)]
    for f, text in enumerate(words):
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / f"client{f}.txt").write_text(text + "\n")
    extra = [f"data.source=\"{tmp_path / 'data'}\"", "data.vocab_size=300", "federated.partition=\"files\"",
             "federated.rounds=1"]
    with pytest.raises(ConfigError, match="has 3 files, expected federated.clients = 2"):
        _fit(tmp_path / "bad", "federated.clients=2", *extra)
    config = _config("federated.clients=3", *extra)
    data = client_datasets(config, run_corpus(config, None))
    corpus = run_corpus(config, None)
    for f, client in enumerate(data):
        text = corpus.decode(client.batch(0)[0][0])
        assert f"w{f}x" in text and not any(f"w{g}x" in text for g in range(3) if g != f)


TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
SGD_MOMENTUM = ["train.optimizer=\"sgd\"", "train.momentum=0.9", "train.lr=0.1"]


@pytest.mark.parametrize("extra", [["federated.clients=3", "federated.local_steps=2", "federated.algorithm=\"fedprox\""],
                                   ["federated.clients=5", "federated.clients_per_round=2",
                                    "federated.client_state=\"keep\"", "federated.rounds=4"]])
def test_torchrun_client_groups_equal_one_process(tmp_path, extra):
    """2 processes (each a client group, the server rank 0) give the model one process simulating every client gives.
    SGD with momentum (a state to keep): AdamW's first steps (~ lr * sign(g)) would magnify the last-bit
    differences of summing the updates in another order."""
    extra = ["federated.rounds=2", *SGD_MOMENTUM, *extra]
    single = _fit(tmp_path / "single", *extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "fastlm", "train", "tiny",
           "--out", str(tmp_path / "dp"), "--quiet", *[a for item in [*MICRO, *extra] for a in ("--set", item)]]
    run = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    multi = safetensors.torch.load_file(tmp_path / "dp" / "model.safetensors")
    for key in single:
        torch.testing.assert_close(single[key], multi[key], atol=1e-6, rtol=1e-5, msg=key)


def test_resume_continues_exactly(tmp_path):
    import shutil

    extra = ["federated.clients=4", "federated.clients_per_round=2", "federated.rounds=4", "federated.local_steps=2",
             "federated.client_state=\"keep\"", "federated.client_dp={clip = 0.5, noise_multiplier = 0.3}",
             "checkpoint.every=2"]
    full = _fit(tmp_path / "full", *extra)
    shutil.copytree(tmp_path / "full", tmp_path / "part")  # then make it a run killed after its round-2 checkpoint
    shutil.rmtree(tmp_path / "part" / "checkpoints" / "step_0000004")
    (tmp_path / "part" / "model.safetensors").unlink()
    Trainer(_config(*extra), out_dir=tmp_path / "part", show_progress=False, resume=True).fit()
    part = safetensors.torch.load_file(tmp_path / "part" / "model.safetensors")
    for key in full:
        torch.testing.assert_close(full[key], part[key], rtol=0, atol=0, msg=key)
    assert [r["round"] for r in read_metrics(tmp_path / "part") if "loss" in r] == [1, 2, 3, 4]
    with pytest.raises(Exception, match="does not match this run"):
        Trainer(_config(*extra, "federated.partition=\"dirichlet\""), out_dir=tmp_path / "part", show_progress=False,
                resume=True).fit()


def test_torchrun_resume_gathers_and_scatters_client_states(tmp_path):
    """2 processes checkpoint every client's optimizer state (gathered on rank 0) and, resumed, give the model an
    uninterrupted single process gives."""
    import shutil

    extra = ["federated.clients=5", "federated.clients_per_round=3", "federated.rounds=4",
             "federated.client_state=\"keep\"", "checkpoint.every=2", *SGD_MOMENTUM]
    single = _fit(tmp_path / "single", *extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(out, *more):
        cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "fastlm", "train", "tiny",
               "--out", str(out), "--quiet", *more, *[a for item in [*MICRO, *extra] for a in ("--set", item)]]
        run = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]

    torchrun(tmp_path / "dp")
    shutil.rmtree(tmp_path / "dp" / "checkpoints" / "step_0000004")
    (tmp_path / "dp" / "model.safetensors").unlink()
    torchrun(tmp_path / "dp", "--resume")
    multi = safetensors.torch.load_file(tmp_path / "dp" / "model.safetensors")
    for key in single:
        torch.testing.assert_close(single[key], multi[key], atol=1e-6, rtol=1e-5, msg=key)


def test_files_partition_prepares_documents_like_the_corpus(tmp_path):
    """A client's file goes through data.deidentify and data.counterfactual like the run's corpus."""
    (tmp_path / "data").mkdir()
    for f in range(2):
        lines = [f"he wrote to alice{f}@example.com about item {i} and then he left" for i in range(300)]
        (tmp_path / "data" / f"client{f}.txt").write_text("\n\n".join(lines) + "\n")
    config = _config("federated.clients=2", "federated.partition=\"files\"", f"data.source=\"{tmp_path / 'data'}\"",
                     "data.vocab_size=300", "data.deidentify=[\"email\"]", "data.counterfactual=\"gender\"")
    corpus = run_corpus(config, None)
    for client in client_datasets(config, corpus):
        text = corpus.decode(client.tokens)
        assert "example.com" not in text and "<EMAIL>" in text
        assert " she " in text and " he " in text  # the mirrored copies
