"""Data parallelism: bucketed gradient all-reduce overlapped with the backward, ZeRO-1, weighted shares.

    model = DataParallel(model, mesh)           # or a ProcessGroup, or None (the whole world)
    for micro in micro_batches[:-1]:
        with model.no_sync():                   # accumulate locally, no communication
            model(micro, labels=micro)[1].backward()
    model(last, labels=last)[1].backward()      # buckets are all-reduced as they fill up
    model.finish_grad_sync()                    # wait for them (before clipping / the step)
    optimizer.step(); optimizer.zero_grad()

How it works:
- One contiguous gradient buffer per dtype; every parameter's `.grad` is a view into it
  (re-attached in forward() after `zero_grad(set_to_none=True)`).
- The buffer is cut into buckets of about `bucket_mb`, laid out in the order the backward
  produces the gradients: reverse registration order at first, rebuilt from the order observed
  in the first synchronized backward.
- A hook (`register_post_accumulate_grad_hook`) counts each bucket's gradients; when the last one
  is in, an asynchronous all-reduce of the bucket starts, so communication overlaps the rest of the
  backward. Buckets start in index order on every rank (collectives must match across ranks).
- Averaging: each rank scales its bucket by its weight n_i / sum(n) (1/world by default, or its
  share of the samples, `set_shares`) before a SUM; one fused op per bucket.
- grad_reduce_dtype=bf16|fp16: a fused cast+scale kernel (fastlm.ops.cast_scale) writes the
  bucket in 16 bits, the collective runs in 16 bits, the result is cast back into the fp32 buffer.
- shard_optimizer=True (ZeRO-1): buckets are reduce-scattered; `wrap_optimizer` gives an optimizer
  (zero.py) that holds and steps only this rank's 1/dp of every bucket (fp32 state), then
  all-gathers the updated parameters bucket by bucket. It sees the layout (buckets.py) only through
  params, param_names, shard_segments(), flat_grad() and all_gather_params().
"""
from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.distributed as dist
from torch import nn

from fastlm.parallel.buckets import Bucket, ShardSegment, bucket_segments, plan_buckets
from fastlm.parallel.mesh import Mesh, _check_equal, record_collective, wait_work, weights_checksum
from fastlm.parallel.zero import ShardedOptimizer

# torch 2.13 renamed the flat-tensor collective (the old name warns); torch 2.6 has only the old one.
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

REDUCE_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                 "float16": torch.float16, torch.bfloat16: torch.bfloat16, torch.float16: torch.float16}


class DataParallel(nn.Module):
    def __init__(self, module: nn.Module, mesh: Mesh | dist.ProcessGroup | None = None, *, bucket_mb: float = 25,
                 overlap: bool = True, grad_reduce_dtype: str | torch.dtype | None = None,
                 shard_optimizer: bool = False, find_unused: bool = False, shares=None):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"DataParallel: module must be an nn.Module, got {type(module).__name__}")
        if not (isinstance(bucket_mb, (int, float)) and bucket_mb > 0 and math.isfinite(bucket_mb)):
            raise ValueError(f"DataParallel: bucket_mb must be a positive number, got {bucket_mb!r}")
        if grad_reduce_dtype is not None and grad_reduce_dtype not in REDUCE_DTYPES:
            raise ValueError(f"DataParallel: grad_reduce_dtype must be None, 'bf16' or 'fp16', got {grad_reduce_dtype!r}")
        self.module = module
        if isinstance(mesh, Mesh):
            group = mesh.dp_group
        elif mesh is None:
            group = dist.group.WORLD if dist.is_available() and dist.is_initialized() else None
        else:
            group = mesh
        self.group = group
        self.world_size = dist.get_world_size(group) if group is not None else 1
        self.rank = dist.get_rank(group) if group is not None else 0
        self.ranks = dist.get_process_group_ranks(group) if group is not None else [0]
        self.bucket_mb = float(bucket_mb)
        self.overlap = bool(overlap)
        self.grad_reduce_dtype = REDUCE_DTYPES[grad_reduce_dtype] if grad_reduce_dtype is not None else None
        self.shard_optimizer = bool(shard_optimizer)
        self.find_unused = bool(find_unused)

        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("DataParallel: the module has no parameters that require gradients")
        devices = {p.device for _, p in named}
        if len(devices) > 1:
            raise ValueError(f"DataParallel: all parameters must be on one device, found {sorted(map(str, devices))}")
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self.device = self._params[0].device
        if self.world_size > 1:
            _check_equal("initial weights", weights_checksum(module), group, dist.get_rank(),
                         describe=lambda d: d[:12],
                         hint="seed every rank the same (torch.manual_seed) before building the model")
        self._weight = 1.0 / self.world_size
        if shares is not None:
            self.set_shares(shares)

        self._no_sync = False
        self._last_sync_sharded = False  # the last finish_grad_sync reduce-scattered
        self._layout_final = False    # becomes True once the observed order is known
        self._observed: list[int] = []
        self._build(list(reversed(range(len(self._params)))))
        self._reset_sync_state()
        self._hooks = [p.register_post_accumulate_grad_hook(self._make_hook(i)) for i, p in enumerate(self._params)]

    # ------------------------------------------------------------------ layout

    def _build(self, order: list[int]) -> None:
        """Lay out buckets and buffers in `order` (the order the backward produces gradients)."""
        W = self.world_size
        limit = max(1, int(self.bucket_mb * 2**20))
        buckets, offsets, sizes = plan_buckets(self._params, order, limit, W)
        self._grad_buffers = {dt: torch.zeros(n, dtype=dt, device=self.device) for dt, n in sizes.items()}
        self._buckets = buckets
        self._bucket_of = [0] * len(self._params)
        for b in buckets:
            b.grad = self._grad_buffers[b.dtype][b.start:b.start + b.size]
            if self.grad_reduce_dtype is not None and b.dtype != self.grad_reduce_dtype:
                b.comm = torch.empty(b.size, dtype=self.grad_reduce_dtype, device=self.device)
            if self.shard_optimizer and W > 1:
                b.shard_out = torch.empty(b.size // W, dtype=(b.comm if b.comm is not None else b.grad).dtype,
                                          device=self.device)
            for i in b.params:
                self._bucket_of[i] = b.index
        self._offsets = offsets
        self._views = [self._grad_buffers[p.dtype][o:o + p.numel()].view_as(p) for p, o in zip(self._params, offsets)]
        for i, p in enumerate(self._params):
            if p.grad is not None:
                self._views[i].copy_(p.grad)
                p.grad = self._views[i]

    def _reset_sync_state(self) -> None:
        self._ready = [False] * len(self._params)
        self._pending = [len(b.params) for b in self._buckets]
        self._next = 0
        self._works: list[tuple[Bucket, object, bool]] = []
        self._any_ready = False

    # ------------------------------------------------------------------ forward / hooks

    def forward(self, *args, **kwargs):
        self._attach_grads()
        return self.module(*args, **kwargs)

    def _attach_grads(self) -> None:
        """Make every .grad a view of the buffer again (zeroed where the grad was None)."""
        missing = []
        for p, v in zip(self._params, self._views):
            g = p.grad
            if g is None:
                missing.append(v)
            elif g.data_ptr() != v.data_ptr():
                v.copy_(g)
                p.grad = v
        if not missing:
            return
        if len(missing) == len(self._params):
            for buf in self._grad_buffers.values():
                buf.zero_()
        else:
            torch._foreach_zero_(missing)
        for p, v in zip(self._params, self._views):
            if p.grad is None:
                p.grad = v

    def _make_hook(self, i: int):
        def hook(p: torch.Tensor) -> None:
            v = self._views[i]
            if p.grad is not None and p.grad.data_ptr() != v.data_ptr():
                # The grad was None before this backward (forward() was bypassed): move it in.
                v.copy_(p.grad)
                p.grad = v
            if self._no_sync:
                return
            if self._ready[i]:
                raise RuntimeError(
                    f"DataParallel: parameter {self._names[i]} got its gradient twice in one synchronized "
                    f"backward (call finish_grad_sync() after each backward outside no_sync(); reentrant "
                    f"checkpointing is not supported)")
            self._ready[i] = True
            self._any_ready = True
            if not self._layout_final:
                self._observed.append(i)
            b = self._bucket_of[i]
            self._pending[b] -= 1
            if self._pending[b] == 0 and self.overlap:
                self._launch_ready()

        return hook

    def _launch_ready(self) -> None:
        while self._next < len(self._buckets) and self._pending[self._next] == 0:
            self._launch(self._buckets[self._next])
            self._next += 1

    def _launch(self, b: Bucket) -> None:
        if self.world_size == 1:
            return
        sharded = self.shard_optimizer and self._layout_final
        data = b.grad
        if b.comm is not None:
            from fastlm.ops import cast_scale

            cast_scale(b.grad, self._weight, out=b.comm)
            data = b.comm
        else:
            data.mul_(self._weight)
        if sharded:
            name = f"reduce_scatter of gradient bucket {b.index}"
            record_collective(name)
            work = _reduce_scatter(b.shard_out, data, group=self.group, async_op=True)
        else:
            name = f"all_reduce of gradient bucket {b.index}"
            record_collective(name)
            work = dist.all_reduce(data, group=self.group, async_op=True)
        self._works.append((b, work, sharded))

    # ------------------------------------------------------------------ public API

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside accumulate gradients locally, with no communication."""
        previous, self._no_sync = self._no_sync, True
        try:
            yield
        finally:
            self._no_sync = previous

    def finish_grad_sync(self) -> None:
        """Wait for every bucket's collective (launching any not started); call before the optimizer step."""
        if not self._any_ready:
            return  # no synchronized backward since the last call
        missing = [i for i, r in enumerate(self._ready) if not r]
        if missing and not self.find_unused:
            names = [self._names[i] for i in missing]
            shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            self._reset_sync_state()
            raise RuntimeError(f"DataParallel: {len(names)} parameter(s) got no gradient in this backward: {shown} "
                               f"(freeze them with requires_grad_(False), or pass find_unused=True)")
        for i in missing:  # find_unused: their gradient is what has accumulated (zeros if nothing)
            if self._params[i].grad is None:
                self._views[i].zero_()
                self._params[i].grad = self._views[i]
            self._pending[self._bucket_of[i]] -= 1
        self._launch_ready()
        assert self._next == len(self._buckets)
        for b, work, sharded in self._works:
            what = ("reduce_scatter" if sharded else "all_reduce") + f" of gradient bucket {b.index}"
            wait_work(work, what, self.ranks)
            if sharded:
                mine = b.grad.chunk(self.world_size)[self.rank]
                if b.shard_out.dtype == mine.dtype:
                    mine.copy_(b.shard_out)
                else:
                    from fastlm.ops import cast_scale

                    cast_scale(b.shard_out, 1.0, out=mine)
            elif b.comm is not None:
                from fastlm.ops import cast_scale

                cast_scale(b.comm, 1.0, out=b.grad)
        self._last_sync_sharded = any(s for _, _, s in self._works)  # none launch with one rank
        self._reset_sync_state()
        if not self._layout_final:
            self._layout_final = True
            seen = set(self._observed)
            order = list(dict.fromkeys(self._observed)) + [i for i in reversed(range(len(self._params))) if i not in seen]
            if order != self._layout_order():
                self._build(order)
                self._reset_sync_state()
            self._observed = []

    def _layout_order(self) -> list[int]:
        return [i for b in self._buckets for i in b.params]

    def set_shares(self, shares) -> None:
        """Average gradients weighted by each rank's share of the samples: sum n_i g_i / sum n_i."""
        shares = list(shares)
        if len(shares) != self.world_size or not all(isinstance(s, (int, float)) and s > 0 for s in shares):
            raise ValueError(f"DataParallel: shares must be {self.world_size} positive numbers (one per rank), got {shares!r}")
        self._weight = float(shares[self.rank]) / float(sum(shares))

    def mean_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """The average of a per-rank mean (e.g. the loss) over the ranks, weighted like the gradients."""
        if self.world_size == 1:
            return value
        out = value.detach().float() * self._weight
        record_collective("all_reduce of the loss")
        wait_work(dist.all_reduce(out, group=self.group, async_op=True), "all_reduce of the loss", self.ranks)
        return out

    @property
    def buckets(self) -> list[list[str]]:
        """The parameter names of each bucket, in launch order."""
        return [[self._names[i] for i in b.params] for b in self._buckets]

    # ------------------------------------------------------------------ what ZeRO-1 uses (zero.py)

    @property
    def params(self) -> tuple[nn.Parameter, ...]:
        """The parameters this wrapper synchronizes (those that require grad), in registration order."""
        return tuple(self._params)

    @property
    def param_names(self) -> tuple[str, ...]:
        """Their names in the wrapped module, same order as `params`."""
        return tuple(self._names)

    @property
    def grads_sharded(self) -> bool:
        """True when the last finish_grad_sync reduce-scattered: each rank holds the reduced
        gradient of its shard of every bucket only (shard_optimizer=True, after the first step)."""
        return self._last_sync_sharded

    def shard_segments(self) -> list[ShardSegment]:
        """This rank's shard of every bucket, as slices of the (flattened) parameters."""
        numels = [p.numel() for p in self._params]
        return [s for b in self._buckets for s in bucket_segments(b, self._offsets, numels, self.rank, self.world_size)]

    def flat_grad(self, index: int) -> torch.Tensor:
        """Parameter `index`'s gradient as a flat view of the gradient buffer (what its .grad is
        re-attached to); valid as long as the bucket layout, fixed after the first synchronized backward."""
        return self._views[index].view(-1)

    @torch.no_grad()
    def all_gather_params(self) -> None:
        """After each rank updated its shard of the parameters: every rank sends its part of each
        bucket, and all copy the whole bucket back into the parameters."""
        numels = [p.numel() for p in self._params]
        works = []
        for b in self._buckets:
            lo_b, hi_b = b.shard(self.rank, self.world_size)
            full = torch.empty(b.size, dtype=b.dtype, device=self.device)
            send = torch.zeros(hi_b - lo_b, dtype=b.dtype, device=self.device)
            for i, _, lo, hi in bucket_segments(b, self._offsets, numels, self.rank, self.world_size):
                start = self._offsets[i] - lo_b
                send[start + lo:start + hi] = self._params[i].detach().view(-1)[lo:hi]
            record_collective(f"all_gather of parameter bucket {b.index}")
            works.append((b, full, _all_gather(full, send, group=self.group, async_op=True)))
        for b, full, work in works:
            wait_work(work, f"all_gather of parameter bucket {b.index}", self.ranks)
            params = [self._params[i].detach() for i in b.params]
            parts = [full[self._offsets[i] - b.start:self._offsets[i] - b.start + p.numel()].view_as(p)
                     for i, p in zip(b.params, params)]
            torch._foreach_copy_(params, parts)

    # ------------------------------------------------------------------ clipping, local SGD, optimizer

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Global gradient-norm clipping (also when the gradients are sharded). Returns the norm."""
        if not self._last_sync_sharded:
            return torch.nn.utils.clip_grad_norm_(self._params, max_norm)
        mine = [b.grad.chunk(self.world_size)[self.rank] for b in self._buckets]
        sq = torch.stack([c.float().pow(2).sum() for c in mine]).sum()
        record_collective("all_reduce of the gradient norm")
        wait_work(dist.all_reduce(sq, group=self.group, async_op=True), "all_reduce of the gradient norm", self.ranks)
        total = sq.sqrt()
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        torch._foreach_mul_(mine, coef)
        return total

    def averaged_tensors(self, optimizer: torch.optim.Optimizer | None = None) -> list[list[torch.Tensor]]:
        """What local SGD averages, grouped by dtype: the parameters and the optimizer's per-parameter float state."""
        tensors = [p.data for p in self._params]
        if optimizer is not None:
            for p in self._params:
                for v in optimizer.state.get(p, {}).values():
                    if torch.is_tensor(v) and v.is_floating_point() and v.shape == p.shape:
                        tensors.append(v)
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        return list(by_dtype.values())

    def average_parameters(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Average parameters (and the optimizer's per-parameter float state) over the ranks (local SGD)."""
        if self.world_size == 1:
            return
        from fastlm.parallel.async_averaging import injected_comm_delay

        time.sleep(injected_comm_delay())  # 0 unless a test or benchmark injects a communication delay
        with torch.no_grad():
            for ts in self.averaged_tensors(optimizer):
                flat = torch._utils._flatten_dense_tensors(ts).mul_(self._weight)
                record_collective("all_reduce of the parameters (local SGD)")
                wait_work(dist.all_reduce(flat, group=self.group, async_op=True),
                          "all_reduce of the parameters (local SGD)", self.ranks)
                torch._foreach_copy_(ts, torch._utils._unflatten_dense_tensors(flat, ts))

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer):
        """The optimizer to step: itself, or with shard_optimizer=True its ZeRO-1 sharded version."""
        if not self.shard_optimizer or self.world_size == 1:
            return optimizer
        return ShardedOptimizer(self, optimizer)

    # the wrapped model's own API passes through
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)
