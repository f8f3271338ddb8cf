"""ZeRO-1 for DataParallel(shard_optimizer=True): each rank keeps and steps the optimizer state of
its 1/dp shard of every gradient bucket, then the updated parameters are all-gathered."""
from __future__ import annotations

from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn

from fastlm.parallel.buckets import ShardSegment
from fastlm.parallel.mesh import record_collective


class ShardedGradients(Protocol):
    """What ZeRO-1 uses of the data-parallel wrapper (DataParallel implements it)."""

    group: dist.ProcessGroup | None
    rank: int
    world_size: int

    @property
    def params(self) -> tuple[nn.Parameter, ...]: ...

    @property
    def param_names(self) -> tuple[str, ...]: ...

    def finish_grad_sync(self) -> None: ...

    def shard_segments(self) -> list[ShardSegment]: ...

    def flat_grad(self, index: int) -> torch.Tensor: ...

    def all_gather_params(self) -> None: ...


class ShardedOptimizer:
    """ZeRO-1: steps only this rank's shard of every bucket, then all-gathers the parameters.

    Built from an ordinary optimizer (its class, defaults and param groups). The local optimizer
    is created at the first step (after the bucket layout is final). state_dict() holds this
    rank's shard; full_state_dict() (collective) gathers every rank's shard for a checkpoint, and
    load_state_dict() takes that gathered form, for any dp size.
    """

    FORMAT = "fastlm-zero1"

    def __init__(self, dp: ShardedGradients, optimizer: torch.optim.Optimizer):
        self.dp = dp
        self.base = optimizer
        index = {id(p): i for i, p in enumerate(dp.params)}
        self._group_of: dict[int, int] = {}
        for g, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                if id(p) not in index:
                    raise ValueError("ShardedOptimizer: the optimizer holds a parameter that DataParallel does not")
                self._group_of[index[id(p)]] = g
        self.inner: torch.optim.Optimizer | None = None
        self._pending_state: dict | None = None

    @property
    def param_groups(self):
        return (self.inner or self.base).param_groups

    @property
    def state(self):
        return self.inner.state if self.inner is not None else {}

    def _build(self) -> None:
        dp, params = self.dp, self.dp.params
        self._segs = [(i, lo, hi) for i, _, lo, hi in dp.shard_segments()]
        self._shard_params = []
        self._shard_grads = []
        groups = [{k: v for k, v in g.items() if k != "params"} | {"params": []} for g in self.base.param_groups]
        for i, lo, hi in self._segs:
            p = nn.Parameter(params[i].detach().view(-1)[lo:hi])  # a view: steps update the parameter
            self._shard_params.append(p)
            self._shard_grads.append(dp.flat_grad(i)[lo:hi])
            groups[self._group_of.get(i, 0)]["params"].append(p)
        groups = [g for g in groups if g["params"]] or [groups[0] | {"params": [nn.Parameter(torch.zeros(1))]}]
        self.inner = type(self.base)(groups)  # every group carries all of its hyperparameters
        # The inner optimizer numbers its parameters group by group; checkpoints number segments.
        seg_of = {id(p): k for k, p in enumerate(self._shard_params)}
        flat = [p for g in self.inner.param_groups for p in g["params"]]
        self._inner_index = {seg_of[id(p)]: n for n, p in enumerate(flat) if id(p) in seg_of}
        self.base.state.clear()
        if self._pending_state is not None:  # its hyperparameters are in base's groups already
            self._apply_full_state(self._pending_state, applied_groups=True)
            self._pending_state = None

    def step(self, closure=None):
        dp = self.dp
        dp.finish_grad_sync()
        if self.inner is None:
            self._build()
        for p, g in zip(self._shard_params, self._shard_grads):
            p.grad = g
        self.inner.step(closure)
        dp.all_gather_params()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.dp.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()
        for p in getattr(self, "_shard_params", []):
            p.grad = None

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """This rank's shard: per segment (parameter name, start, end) its optimizer state."""
        if self.inner is None:
            if self._pending_state is not None:
                return self._pending_state
            self._build()
        inner = self.inner.state_dict()
        names = self.dp.param_names
        segs = [(names[i], lo, hi) for i, lo, hi in self._segs]
        state = {k: inner["state"][n] for k, n in self._inner_index.items() if n in inner["state"]}
        return {"format": self.FORMAT, "dp": self.dp.world_size, "rank": self.dp.rank, "segments": segs,
                "state": state, "param_groups": [{k: v for k, v in g.items() if k != "params"}
                                                          for g in inner["param_groups"]]}

    def full_state_dict(self) -> dict:
        """Every rank's shard (a collective: call on every rank), as {"format", "shards": [...]}."""
        mine = self.state_dict()
        if isinstance(mine, dict) and "shards" in mine:
            return mine
        mine = _to_cpu(mine)
        shards: list = [None] * self.dp.world_size
        record_collective("all_gather_object of optimizer shards")
        dist.all_gather_object(shards, mine, group=self.dp.group)
        return {"format": self.FORMAT, "shards": shards}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != self.FORMAT or "shards" not in state:
            raise ValueError("the optimizer state is not a sharded (ZeRO-1) state: set parallel.shard_optimizer "
                             "as in the run that saved it")
        if self.inner is None:
            self._pending_state = state
            # The saved hyperparameters take effect now, as with a torch optimizer: a learning rate set
            # after loading (the schedule's, before the first step) must not be overwritten at _build.
            self._apply_group_settings(self.base.param_groups, state)
        else:
            self._apply_full_state(state)

    def _apply_full_state(self, state: dict, applied_groups: bool = False) -> None:
        # Reassemble each parameter's full state from the shards, then cut out this rank's segments.
        full: dict[str, dict[str, torch.Tensor]] = {}
        scalars: dict[str, dict] = {}
        numel = {n: p.numel() for n, p in zip(self.dp.param_names, self.dp.params)}
        for shard in state["shards"]:
            for k, (name, lo, hi) in enumerate(shard["segments"]):
                if name not in numel:
                    raise ValueError(f"the optimizer state has parameter {name}, which this model lacks")
                for key, v in shard["state"].get(k, {}).items():
                    if torch.is_tensor(v) and v.dim() == 1 and v.numel() == hi - lo and key != "step":
                        t = full.setdefault(name, {}).get(key)
                        if t is None:
                            t = full[name][key] = torch.zeros(numel[name], dtype=v.dtype)
                        t[lo:hi] = v.cpu()
                    else:
                        scalars.setdefault(name, {})[key] = v
        inner = self.inner.state_dict()
        new_state = {}
        names = self.dp.param_names
        for k, (i, lo, hi) in enumerate(self._segs):
            name = names[i]
            if name not in full and name not in scalars:
                continue
            entry = {key: t[lo:hi].clone() for key, t in full.get(name, {}).items()}
            entry.update({key: v.clone() if torch.is_tensor(v) else v for key, v in scalars.get(name, {}).items()})
            new_state[self._inner_index[k]] = entry
        inner["state"] = new_state
        if not applied_groups:
            self._apply_group_settings(inner["param_groups"], state)
        self.inner.load_state_dict(inner)

    @staticmethod
    def _apply_group_settings(groups: list[dict], state: dict) -> None:
        """The saved hyperparameters (lr, betas, ...) of each parameter group, into `groups`."""
        saved_groups = state["shards"][0]["param_groups"]
        if len(saved_groups) == len(groups):
            for g, saved in zip(groups, saved_groups):
                g.update({k: v for k, v in saved.items() if k != "params"})


def _to_cpu(obj):
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
