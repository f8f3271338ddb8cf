"""The worker's side of parallel.sync = "param_server": an optimizer whose step pushes gradients to the shard servers.

    optimizer = param_server_for_run(config, pm, build_optimizer(...), rank, world)  # under torchrun
    step = TrainStep(pm, optimizer, ...)   # gradients stay local (optimizer.pushes_gradients)

step() sends each shard's part of this rank's (clipped) gradient to the shard's server with
rpc_async, together with the learning rates the loop set in param_groups, and returns at once:
the next step runs on the parameters this worker has. An answer (the shard's parameters after
the push) is copied into the model when it arrives, checked after every step; a worker runs at
most `max_staleness` steps ahead of the parameters it last pulled (it waits for the oldest answer
otherwise). max_staleness = 0 waits at once: with one worker, plain one-process training.

drain() (before a checkpoint, and after the last step) waits for this worker's pushes, waits for
every worker's (a barrier), then pulls every shard: all workers hold the servers' parameters.
full_state_dict() gathers the shards' optimizer states into the layout the trainer's optimizer
has (one state per parameter, by its index), so checkpoints are the ordinary ones; on resume
each server loads its part again (load_state_dict) from the resumed model and that state.
"""
from __future__ import annotations

import collections
import sys

import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc

from fastlm.parallel import param_server as ps


class ParamServerOptimizer:
    pushes_gradients = True  # TrainStep: no gradient all-reduce; each worker's own gradient goes to the servers

    def __init__(self, template: torch.optim.Optimizer, servers: int, max_staleness: int, rank: int = 0,
                 hosts: list[int] | None = None):
        """template: the optimizer the run built over the model (never stepped here: it gives the param
        groups, the learning rates the loop sets, and the class and options of the servers' optimizers);
        hosts[s]: the rank serving shard s (default: rank s; every rank passes the same)."""
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        self.template, self.max_staleness, self.rank = template, max_staleness, rank
        self.param_groups = template.param_groups  # the loop's set_lr writes the learning rate here
        self.params = [p for g in template.param_groups for p in g["params"]]  # state_dict's index order
        self.group_of = [gi for gi, g in enumerate(template.param_groups) for _ in g["params"]]
        self.shards = ps.shard_by_size([p.numel() for p in self.params], servers)
        self.host_ranks = list(hosts) if hosts is not None else list(range(servers))
        self.hosts = [ps.worker_name(r) for r in self.host_ranks]
        self.pending: collections.deque[list] = collections.deque()  # per push: one future per shard
        self.max_ahead = 0  # the most steps this worker ran ahead of its parameters (tests, metrics)
        for shard, host in enumerate(self.host_ranks):
            if host == rank:
                mine = self.shards[shard]
                ps.host_shard(shard, [self.params[i] for i in mine], [self.group_of[i] for i in mine], template)

    @property
    def state(self):
        return self.template.state  # empty: the state lives on the servers

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.template.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        lrs = [g["lr"] for g in self.param_groups]
        futures = []
        for shard, indices in enumerate(self.shards):
            present = [self.params[i].grad is not None for i in indices]
            grads = [self.params[i].grad.detach().float().cpu().reshape(-1) for i, p in zip(indices, present) if p]
            flat = torch.cat(grads) if grads else torch.zeros(0)  # always a copy (RPC may send it later; grads get reused)
            futures.append(rpc.rpc_async(self.hosts[shard], ps.push, args=(shard, flat, present, lrs)))
        self.pending.append(futures)
        while self.pending and (len(self.pending) > self.max_staleness or all(f.done() for f in self.pending[0])):
            self._apply([f.wait() for f in self.pending.popleft()])
        self.max_ahead = max(self.max_ahead, len(self.pending))  # pushes not yet reflected in this worker's weights

    def drain(self) -> None:
        """Wait for this worker's pushes and every other worker's (a barrier), then pull every shard."""
        while self.pending:
            self._apply([f.wait() for f in self.pending.popleft()])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()
        self._apply([rpc.rpc_async(host, ps.pull, args=(s,)) for s, host in enumerate(self.hosts)], wait=True)

    def _apply(self, flats: list, wait: bool = False) -> None:
        with torch.no_grad():
            for indices, flat in zip(self.shards, flats):
                params = [self.params[i] for i in indices]
                flat = flat.wait() if wait else flat
                for p, value in zip(params, torch._utils._unflatten_dense_tensors(flat, params)):
                    p.copy_(value)

    # ------------------------------------------------------------------ checkpoints

    def full_state_dict(self) -> dict:
        """The servers' optimizer states as one optimizer's state_dict over self.params (a collective:
        the main rank gathers while the others wait, so no push changes a state half-read)."""
        state: dict = {}
        if self.rank == 0:
            parts = [rpc.rpc_async(host, ps.optimizer_state, args=(s,)) for s, host in enumerate(self.hosts)]
            for indices, part in zip(self.shards, parts):
                part = part.wait()
                for j, i in enumerate(self._server_order(indices)):
                    if j in part["state"]:
                        state[i] = part["state"][j]
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()
        template = self.template.state_dict()
        return {"state": state, "param_groups": template["param_groups"]}

    def state_dict(self) -> dict:
        return self.full_state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Resume: the served shard takes the model's (already restored) weights and its part of `state`."""
        for shard, host in enumerate(self.host_ranks):
            if host != self.rank:
                continue
            server, indices = ps.hosted(shard), self.shards[shard]
            order = self._server_order(indices)
            groups = [{**state["param_groups"][g], "params": [j for j, i in enumerate(order) if self.group_of[i] == g]}
                      for g in server.group_ids]
            part = {"state": {j: state["state"][i] for j, i in enumerate(order) if i in state["state"]},
                    "param_groups": groups}
            server.load([self.params[i] for i in indices], part)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()  # no worker pushes before every server is restored

    def _server_order(self, indices: list[int]) -> list[int]:
        """The shard's parameters (global indices) in its server optimizer's order (by group, then index)."""
        server_groups = sorted({self.group_of[i] for i in indices})
        return [i for g in server_groups for i in indices if self.group_of[i] == g]

    def close(self) -> None:
        """End RPC (every rank, at the end of the run); without waiting for the others when an error is unwinding."""
        ps.stop_rpc(graceful=sys.exc_info()[0] is None)


def param_server_for_run(config, optimizer, rank: int, world: int):
    """`optimizer`, or with parallel.sync = "param_server" the worker's optimizer over RPC (RPC started here;
    close() ends it). ValueError when the layout does not fit (more servers than processes)."""
    p = config.parallel
    if p.sync != "param_server":
        return optimizer
    if p.param_servers > world:
        raise ValueError(f"parallel.param_servers = {p.param_servers}: more than the {world} processes of this "
                         f"run (the first param_servers ranks each serve one shard)")
    ps.start_rpc(rank, world, p.timeout_s)
    try:
        proxy = ParamServerOptimizer(optimizer, p.param_servers, p.max_staleness, rank)
        if dist.is_initialized() and world > 1:
            dist.barrier()  # every server exists before a worker's first push
    except BaseException:
        ps.stop_rpc(graceful=False)
        raise
    return proxy
