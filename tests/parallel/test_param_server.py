"""parallel.sync = "param_server": shards by size, the servers' updates, staleness, torchrun training, checkpoints."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import itertools
import shutil
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from fastlm.parallel import param_server as ps
from fastlm.parallel.param_server_optimizer import ParamServerOptimizer
from fastlm.train.config import ConfigError
from fastlm.train.metrics import read_metrics
from fastlm.train.optim import build_optimizer
from tests.parallel.dist_helpers import free_port, run_world
from tests.train.train_helpers import MICRO, micro_config

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


# ---------------------------------------------------------------- sharding


@pytest.mark.parametrize("sizes,servers", [([5], 1), ([7, 3, 3, 2, 2, 2], 2), ([100, 1, 1, 1, 50, 50, 9, 30], 3),
                                           ([4, 4, 4, 4], 4), ([8, 7, 6, 5, 4], 2)])
def test_shards_hold_whole_tensors_balanced_near_the_best_split(sizes, servers):
    shards = ps.shard_by_size(sizes, servers)
    assert sorted(i for s in shards for i in s) == list(range(len(sizes)))  # every tensor once
    assert all(s == sorted(s) and s for s in shards)
    # The best split by brute force: largest-first greedy is within 4/3 of it (Graham's bound).
    best = min(max(sum(sz for sz, a in zip(sizes, assign) if a == k) for k in range(servers))
               for assign in itertools.product(range(servers), repeat=len(sizes)))
    assert max(sum(sizes[i] for i in s) for s in shards) <= best * 4 / 3
    assert ps.shard_by_size(sizes, servers) == shards  # deterministic: every rank computes the same


def test_shard_errors():
    with pytest.raises(ValueError, match="param_servers = 3: more servers than the model's 2"):
        ps.shard_by_size([4, 4], 3)
    with pytest.raises(ValueError, match="param_servers = 0"):
        ps.shard_by_size([4], 0)


# ---------------------------------------------------------------- the servers' update, one process


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.body = nn.Linear(6, 9)
        self.norm = nn.LayerNorm(9)
        self.head = nn.Linear(9, 5)
        self.unused = nn.Linear(3, 3)  # never gets a gradient: the servers must skip it, as torch does

    def forward(self, ids):
        return self.head(self.norm(torch.relu(self.body(self.embed(ids))))).logsumexp(-1).mean()


def _train(model, optimizer, steps, clip=0.5):
    losses = []
    for step in range(steps):
        torch.manual_seed(100 + step)
        loss = model(torch.randint(0, 11, (4, 7)))
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip)
        for g in optimizer.param_groups:
            g["lr"] = 0.05 / (step + 1)  # the loop changes the learning rate every step
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.fixture
def rpc_one_process():
    ps.start_rpc(0, 1)
    yield
    ps.stop_rpc()


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_servers_step_like_one_optimizer_over_the_whole_model(rpc_one_process, kind):
    """Three shards served in one process, max_staleness 0: the same weights and optimizer state as the
    configured optimizer stepping the whole model (elementwise updates: bit for bit)."""
    train = micro_config(f"train.optimizer={kind}", "train.weight_decay=0.1").train
    torch.manual_seed(0)
    reference, model = _Net(), _Net()
    model.load_state_dict(reference.state_dict())
    plain = build_optimizer(reference, train, torch.device("cpu"))
    proxy = ParamServerOptimizer(build_optimizer(model, train, torch.device("cpu")), 3, 0, hosts=[0, 0, 0])
    assert len(proxy.shards) == 3 and all(proxy.shards)
    _train(reference, plain, 5)
    _train(model, proxy, 5)
    for (name, a), b in zip(reference.named_parameters(), model.parameters()):
        assert torch.equal(a, b), name
    saved = proxy.full_state_dict()  # the servers' states in the whole optimizer's layout
    expected = plain.state_dict()
    assert saved["state"].keys() == expected["state"].keys()  # the unused layer has no state in either
    for i, state in expected["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(saved["state"][i][key]), torch.as_tensor(value)), (i, key)


def test_resumed_servers_continue_like_the_optimizer(rpc_one_process):
    """load_state_dict gives each server its part of a saved state: training continues bit for bit."""
    train = micro_config().train
    torch.manual_seed(0)
    reference, model = _Net(), _Net()
    model.load_state_dict(reference.state_dict())
    plain = build_optimizer(reference, train, torch.device("cpu"))
    _train(reference, plain, 3)
    model.load_state_dict(reference.state_dict())
    proxy = ParamServerOptimizer(build_optimizer(model, train, torch.device("cpu")), 2, 0, hosts=[0, 0])
    proxy.load_state_dict(copy.deepcopy(plain.state_dict()))  # a saved state: not the live tensors
    _train(reference, plain, 3)
    _train(model, proxy, 3)
    for (name, a), b in zip(reference.named_parameters(), model.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("max_staleness", [0, 2])
def test_a_worker_runs_at_most_max_staleness_steps_ahead(monkeypatch, rpc_one_process, max_staleness):
    """With every push delayed 0.3 s, a worker steps on at once while at most max_staleness pushes are in
    flight, then waits for the oldest; drain leaves it with the servers' parameters."""
    monkeypatch.setenv("FASTLM_TEST_COMM_DELAY", "0.3")
    torch.manual_seed(0)
    model = _Net()
    proxy = ParamServerOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), 2, max_staleness, hosts=[0, 0])
    ahead, started = [], time.perf_counter()
    for step in range(6):
        model(torch.randint(0, 11, (4, 7))).backward()
        proxy.step()
        proxy.zero_grad()
        ahead.append(len(proxy.pending))
    elapsed = time.perf_counter() - started
    # Never more than max_staleness pushes unanswered; that many while the delay lasts (answers that arrived
    # together are applied together, so it may drop below after a wait).
    assert max(ahead) == proxy.max_ahead == max_staleness and ahead[:max_staleness] == list(range(1, max_staleness + 1))
    if max_staleness == 0:
        assert elapsed >= 6 * 0.3 * 0.95  # every push waited for
    else:  # pushes 1-3 travel together, 4-6 together: two delays (the two shards' pushes overlap too)
        assert 2 * 0.3 * 0.95 <= elapsed < 6 * 0.3 * 0.8
    proxy.drain()
    served = torch.cat([ps.pull(s) for s in range(2)])
    params = list(model.parameters())
    mine = torch.cat([torch._utils._flatten_dense_tensors([params[i] for i in s]) for s in proxy.shards])
    assert torch.equal(served, mine)
    assert [ps.hosted(s).pushes for s in range(2)] == [6, 6]  # every push applied once on each shard


def test_param_server_training_equals_one_process_training(tmp_path):
    """One worker, max_staleness 0, through the trainer: the same losses and weights as sync = "every_step"."""
    from fastlm.train.trainer import Trainer

    runs = {}
    for name, extra in {"plain": [], "ps": ['parallel.sync="param_server"', "parallel.max_staleness=0"]}.items():
        Trainer(micro_config("model.dropout=0.0", "checkpoint.every=0", *extra), tmp_path / name,
                show_progress=False).fit()
        runs[name] = ([m["loss"] for m in read_metrics(tmp_path / name) if "loss" in m],
                      safetensors.torch.load_file(tmp_path / name / "model.safetensors"))
    assert runs["ps"][0] == runs["plain"][0]
    for key, value in runs["plain"][1].items():
        assert torch.equal(runs["ps"][1][key], value), key


def test_checkpoint_holds_the_servers_state_and_resumes_exactly(tmp_path):
    """The step-3 checkpoint of a 6-step run, resumed, ends bit for bit where the uninterrupted run did."""
    from fastlm.train.trainer import Trainer

    sets = ["model.dropout=0.0", 'parallel.sync="param_server"', "parallel.max_staleness=0", "checkpoint.every=3"]
    Trainer(micro_config(*sets), tmp_path / "run", show_progress=False).fit()
    full = safetensors.torch.load_file(tmp_path / "run" / "model.safetensors")
    saved = torch.load(tmp_path / "run" / "checkpoints" / "step_0000006" / "optimizer.pt", weights_only=True)
    assert len(saved["state"]) == len(full)  # every parameter's AdamW state, gathered from the server
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_0000006")
    Trainer(micro_config(*sets), tmp_path / "run", resume=True, show_progress=False).fit()
    resumed = safetensors.torch.load_file(tmp_path / "run" / "model.safetensors")
    for key, value in full.items():
        assert torch.equal(resumed[key], value), key


# ---------------------------------------------------------------- several processes


def _known_gradients(rank, world, max_staleness):
    """Each worker pushes the constant gradient rank + 1 three times (SGD, lr 1) to two servers."""
    from fastlm.parallel import init_mesh

    init_mesh()
    ps.start_rpc(rank, world)
    model = nn.Linear(3, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(100.0)
    proxy = ParamServerOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), 2, max_staleness, rank)
    torch.distributed.barrier()
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.full_like(p, float(rank + 1))
        proxy.step()
        proxy.zero_grad()
    proxy.drain()
    result = [p.detach().clone() for p in model.parameters()]
    ps.stop_rpc()
    return result


@pytest.mark.parametrize("max_staleness", [0, 2])
def test_every_workers_gradient_is_applied_once(max_staleness):
    """Asynchronous SGD: the servers apply every push of every worker exactly once, whatever the order:
    100 - 3 * (1 + 2) = 91 everywhere, on both workers after drain."""
    results = run_world(_known_gradients, 2, max_staleness, timeout=120, env={"FASTLM_TEST_COMM_DELAY": "0.05"})
    for params in results:
        for p in params:
            assert torch.equal(p, torch.full_like(p, 91.0))


def _train_rank(rank, world, out, extra):
    """One torchrun-like rank training through the trainer; returns its final weights and what it served."""
    from fastlm.train.trainer import Trainer

    served = []
    host = ps.host_shard

    def recording_host(*args):
        served.append(host(*args))
        return served[-1]

    ps.host_shard = recording_host
    trainer = Trainer(micro_config("model.dropout=0.0", "checkpoint.every=0", 'parallel.sync="param_server"',
                                   *extra), out, show_progress=False)
    trainer.fit()
    masters = {i: [m.detach().clone() for m in s.masters] for i, s in enumerate(served)}
    return {"params": [p.detach().clone() for p in trainer.model.parameters()], "masters": masters,
            "pushes": [s.pushes for s in served]}


def test_three_workers_two_servers_train_and_end_with_the_servers_parameters(tmp_path):
    extra = ["parallel.param_servers=2", "parallel.max_staleness=1", "train.steps=8", "train.global_batch_size=6",
             "train.micro_batch_size=1", "train.lr=3e-3"]
    results = run_world(_train_rank, 3, tmp_path / "run", extra, timeout=240, env={"FASTLM_TEST_COMM_DELAY": "0.05"})
    losses = [m["loss"] for m in read_metrics(tmp_path / "run") if "loss" in m]
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2])  # it trains
    first = results[0]["params"]
    for r in results[1:]:  # every worker ends with the same parameters ...
        for a, b in zip(first, r["params"]):
            assert torch.equal(a, b)
    assert [len(r["masters"]) for r in results] == [1, 1, 0]  # ranks 0 and 1 serve one shard each
    served = [m for r in results[:2] for m in r["masters"][0]]
    assert sum(m.numel() for m in served) == sum(p.numel() for p in first)  # ... which are the servers'
    flat_served = sorted(torch.cat([m.flatten() for m in served]).tolist())
    assert flat_served == sorted(torch.cat([p.flatten() for p in first]).tolist())
    assert [r["pushes"] for r in results[:2]] == [[24], [24]]  # 3 workers x 8 steps reached each server


def test_torchrun_cli_run_checkpoints_and_resumes(tmp_path):
    """Under torchrun (its agent's store serves the RPC rendezvous) with a delayed network: trains,
    checkpoints the servers' state, resumes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FASTLM_TEST_COMM_DELAY": "0.02"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    sets = [*MICRO, "model.dropout=0.0", "train.steps=6", "train.eval_every=0", "checkpoint.every=3",
            'parallel.sync="param_server"', "parallel.param_servers=2", "parallel.max_staleness=1"]
    cmd = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "fastlm", "train", "tiny",
           "--out", str(tmp_path / "run"), "--quiet", *[a for item in sets for a in ("--set", item)]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [m["loss"] for m in read_metrics(tmp_path / "run") if "loss" in m]
    assert len(losses) == 6 and losses[-1] < losses[0]
    saved = torch.load(tmp_path / "run" / "checkpoints" / "step_0000006" / "optimizer.pt", weights_only=True)
    weights = safetensors.torch.load_file(tmp_path / "run" / "model.safetensors")
    assert len(saved["state"]) == len(weights)  # both servers' AdamW states gathered
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_0000006")
    r = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [m["step"] for m in read_metrics(tmp_path / "run") if "loss" in m] == list(range(1, 7))


def test_config_errors(tmp_path):
    from fastlm.train.trainer import Trainer

    cases = {"parallel.param_servers = 0: expected a positive integer": ['parallel.sync="param_server"',
                                                                          "parallel.param_servers=0"],
             'parallel.param_servers = 2: only used with parallel.sync = "param_server"': ["parallel.param_servers=2"],
             'parallel.sync = "param_server": not available with parallel.sync_every = 4':
                 ['parallel.sync="param_server"', "parallel.sync_every=4"],
             'parallel.sync = "param_server": not available with parallel.dp_shares':
                 ['parallel.sync="param_server"', "parallel.dp_shares=[1, 1]"],
             'parallel.sync = "param_server": not available with train.precision = "fp16"':
                 ['parallel.sync="param_server"', 'train.precision="fp16"']}
    for message, sets in cases.items():
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
            micro_config(*sets)
    with pytest.raises(ConfigError, match=r"parallel.tp = 2: not available with parallel.sync = \"param_server\""):
        micro_config('parallel.sync="param_server"', "parallel.tp=2")
    with pytest.raises(ConfigError, match="param_servers = 2: more than the 1 processes"):
        Trainer(micro_config('parallel.sync="param_server"', "parallel.param_servers=2"), tmp_path / "run",
                show_progress=False).fit()
    assert not (tmp_path / "run").exists()
