"""parallel.sync = "param_server": parameter shards held by servers, updated by the workers' gradients.

    shards = shard_by_size([p.numel() for p in params], servers=2)   # whole tensors, balanced by size
    start_rpc(rank, world)                                            # torch.distributed.rpc over torchrun's env
    host_shard(shard_id, masters, template_optimizer)                 # on the rank that serves the shard
    flat = rpc.rpc_async(host, push, args=(shard_id, flat_grad, present, lrs)).wait()

Layout (colocated servers): under torchrun every rank is a worker, and the first `param_servers`
ranks also each serve one shard (the server is a few tensors and an optimizer in that process,
stepped on an RPC thread while the process's own training runs). It needs no extra processes, so
a run's step time compares with every_step / local_sgd / async on the same ranks.

A server holds its shard's fp32 master weights and the run's optimizer (the same class and groups
as the trainer built, over the shard only). `push` applies one worker's gradient as it arrives
(asynchronous SGD / AdamW: pushes from different workers are applied one after another, in arrival
order) and answers the shard's fresh parameters. FASTLM_TEST_COMM_DELAY (seconds) delays every
push, as a slow network would (tests and benchmarks).
"""
from __future__ import annotations

import os
import socket
import threading
import time
import warnings

import torch
import torch.distributed.rpc as rpc

from fastlm.parallel.async_averaging import injected_comm_delay

RPC_PORT_OFFSET = 7  # without torchrun's agent store: the RPC store at MASTER_PORT + this (see start_rpc)
_SERVERS: dict[int, "ShardServer"] = {}  # the shards this process serves, by shard id


def shard_by_size(sizes: list[int], servers: int) -> list[list[int]]:
    """Whole tensors (their indices, ascending in each shard) split over `servers` shards balanced by size:
    largest first onto the least-loaded shard (ties: the lower shard). Deterministic, so every rank agrees."""
    if servers < 1:
        raise ValueError(f"parallel.param_servers = {servers}: expected a positive integer")
    if servers > len(sizes):
        raise ValueError(f"parallel.param_servers = {servers}: more servers than the model's {len(sizes)} "
                         f"trainable tensors (shards hold whole tensors)")
    shards: list[list[int]] = [[] for _ in range(servers)]
    load = [0] * servers
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        s = min(range(servers), key=lambda s: (load[s], s))
        shards[s].append(i)
        load[s] += sizes[i]
    return [sorted(s) for s in shards]


def worker_name(rank: int) -> str:
    return f"fastlm{rank}"


def start_rpc(rank: int, world: int, timeout_s: float = 300.0) -> None:
    """torch.distributed.rpc on every rank. Under torchrun its agent's store at MASTER_ADDR:MASTER_PORT serves
    the RPC rendezvous too (torch connects every rank to it as a client; the process group's keys have a prefix
    of their own). Launched otherwise (a store hosted by rank 0 at MASTER_PORT), rank 0 hosts a second store at
    MASTER_PORT + RPC_PORT_OFFSET; one process without that env: a free local port."""
    addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        port = _free_port()
    elif os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        port = int(os.environ["MASTER_PORT"])
    else:
        port = int(os.environ["MASTER_PORT"]) + RPC_PORT_OFFSET
    options = rpc.TensorPipeRpcBackendOptions(init_method=f"tcp://{addr}:{port}", rpc_timeout=timeout_s,
                                              num_worker_threads=max(16, 4 * world))
    with warnings.catch_warnings():  # torch's own RPC setup uses a gloo group the deprecated way
        warnings.filterwarnings("ignore", message="You are using a Backend")
        rpc.init_rpc(worker_name(rank), rank=rank, world_size=world, rpc_backend_options=options)


def stop_rpc(graceful: bool = True) -> None:
    """Every rank calls it at the end (graceful: waits for every worker's outstanding calls)."""
    try:
        rpc.shutdown(graceful=graceful)  # first: another worker may still be pulling from the shards served here
    finally:
        _SERVERS.clear()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ShardServer:
    """One shard's fp32 master weights and optimizer; pushes are applied one at a time (a lock)."""

    def __init__(self, masters: list[torch.Tensor], group_of: list[int], template: torch.optim.Optimizer):
        """masters: the shard's tensors (copied to fp32 on the CPU); group_of[j]: the template optimizer's
        param group of master j. The server's optimizer is the template's class, its groups' options kept."""
        self.masters = [torch.nn.Parameter(m.detach().to("cpu", torch.float32, copy=True)) for m in masters]
        self.group_ids = sorted(set(group_of))  # the template's groups this shard has tensors in
        groups = [{**{k: v for k, v in template.param_groups[g].items() if k != "params"},
                   "params": [m for m, gm in zip(self.masters, group_of) if gm == g]} for g in self.group_ids]
        self.optimizer = type(template)(groups)
        self.lock = threading.Lock()
        self.pushes = 0
        self.delay = injected_comm_delay()

    def push(self, flat_grad: torch.Tensor, present: list[bool], lrs: list[float]) -> torch.Tensor:
        """Apply one worker's gradient (of the masters marked present; the others have none this step)
        with the template groups' learning rates `lrs`; returns the updated masters, flattened."""
        if self.delay:
            time.sleep(self.delay)  # the injected network delay (outside the lock: pushes overlap in flight)
        with self.lock:
            with_grad = [m for m, p in zip(self.masters, present) if p]
            for m, g in zip(with_grad, torch._utils._unflatten_dense_tensors(flat_grad, with_grad)):
                m.grad = g
            for group, g in zip(self.optimizer.param_groups, self.group_ids):
                group["lr"] = lrs[g]
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.pushes += 1
            return self.flat()

    def flat(self) -> torch.Tensor:
        """The masters as one new tensor (a copy even for one master: the answer must not change with the next push)."""
        return torch.cat([m.detach().reshape(-1) for m in self.masters])

    def state_dict(self) -> dict:
        with self.lock:
            return self.optimizer.state_dict()

    def load(self, values: list[torch.Tensor], optimizer_state: dict) -> None:
        """Restore the masters (from a resumed model) and the shard's optimizer state."""
        with self.lock, torch.no_grad():
            for m, v in zip(self.masters, values):
                m.copy_(v)
            self.optimizer.load_state_dict(optimizer_state)


def host_shard(shard: int, masters: list[torch.Tensor], group_of: list[int], template) -> ShardServer:
    _SERVERS[shard] = server = ShardServer(masters, group_of, template)
    return server


def hosted(shard: int) -> ShardServer | None:
    return _SERVERS.get(shard)


# What the workers call over RPC (module-level functions: RPC sends them by name).

def push(shard: int, flat_grad: torch.Tensor, present: list[bool], lrs: list[float]) -> torch.Tensor:
    return _SERVERS[shard].push(flat_grad, present, lrs)


def pull(shard: int) -> torch.Tensor:
    server = _SERVERS[shard]
    with server.lock:
        return server.flat()


def optimizer_state(shard: int) -> dict:
    return _SERVERS[shard].state_dict()
