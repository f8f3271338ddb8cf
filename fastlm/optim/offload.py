"""Optimizer offload: AdamW states and fp32 master weights in (pinned) CPU memory, stepped there by
the native CPU AdamW (fastlm.optim.AdamW), bucket by bucket.

    opt = OffloadedAdamW(groups, lr=3e-4, betas=(0.9, 0.95))  # groups as for torch.optim.AdamW
    loss.backward()           # post-accumulate-grad hooks copy each gradient to the host as it is ready
    opt.clip_grad_norm_(1.0)  # the norm on the device; the clip factor is applied on the host
    opt.step()                # per bucket: wait for its copies, step it on the CPU (worker thread), copy back
    opt.zero_grad()

Buckets follow the reverse parameter order (the backward produces the last layers' gradients
first), so the copies of later buckets are still in flight while the worker steps the first ones,
and the updated parameters of a bucket go back (non_blocking) while the next bucket is stepped.
step() ends with the compute stream waiting for those copies, so the next forward reads updated
parameters. Everything except the device copies is plain CPU code: with parameters on the CPU the
engine runs unchanged (the copies are ordinary copies), which is how it is tested without a GPU.
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from fastlm.optim.adamw import AdamW


class OffloadedAdamW:
    def __init__(self, groups, *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, bucket_elems: int = 1 << 22):
        groups = [dict(g) for g in groups] if isinstance(groups[0], dict) else [{"params": list(groups)}]
        self.params: list[torch.Tensor] = [p for g in groups for p in g["params"]]
        devices = {p.device for p in self.params}
        if len(devices) != 1:
            raise ValueError(f"OffloadedAdamW: the parameters are on several devices ({sorted(map(str, devices))})")
        self.device = devices.pop()
        self._cuda = self.device.type == "cuda"
        for p in self.params:
            if p.dtype not in (torch.float32, torch.bfloat16):
                raise TypeError(f"OffloadedAdamW: parameters must be float32 or bfloat16, got {p.dtype}")
        pin = self._cuda  # pinned host memory: asynchronous copies to and from the GPU
        self.masters = [torch.empty(p.shape, dtype=torch.float32, pin_memory=pin) for p in self.params]
        self.host_grads = [torch.zeros(p.shape, dtype=torch.float32, pin_memory=pin) for p in self.params]
        index = {id(p): i for i, p in enumerate(self.params)}
        host_groups = [{k: v for k, v in g.items() if k != "params"} | {"params": [self.masters[index[id(p)]]
                                                                                  for p in g["params"]]}
                       for g in groups]
        self.inner = AdamW(host_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.buckets = _buckets([p.numel() for p in self.params], bucket_elems)
        self._bucket_of = {i: b for b, bucket in enumerate(self.buckets) for i in bucket}
        self._counts = [0] * len(self.buckets)    # gradients copied into each bucket since its last event
        self._arrived = [False] * len(self.params)
        self._events: list[Any] = [None] * len(self.buckets)  # CUDA: a bucket's device-to-host copies are done
        self._d2h = torch.cuda.Stream(self.device) if self._cuda else None
        self._h2d = torch.cuda.Stream(self.device) if self._cuda else None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="fastlm-offload")
        self._clip: tuple[float, torch.Tensor] | None = None
        self._copy_grads = True  # final_backward(False): the coming backward is not the step's last
        self._masters_from_params = True  # until a checkpoint's state is loaded: masters = the parameters
        self._hooks = [p.register_post_accumulate_grad_hook(functools.partial(self._grad_ready, i))
                       for i, p in enumerate(self.params)]

    # ------------------------------------------------------------------ the optimizer interface

    @property
    def param_groups(self):
        return self.inner.param_groups  # the trainer's schedule sets "lr" here

    @property
    def state(self):
        return self.inner.state

    def final_backward(self, final: bool) -> None:
        """Whether the coming backward is the step's last (fastlm.train.TrainStep says so before each
        micro-batch): the gradients go to the host only then. Without this call every backward's are
        copied (in order, so the accumulated gradient of the last one stays)."""
        self._copy_grads = final

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """The gradients' total 2-norm (on the device, as torch.nn.utils.clip_grad_norm_ computes it); the
        clip factor is applied to the host copies in step(), the device gradients are left as they are."""
        grads = [p.grad for p in self.params if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        self._clip = (float(max_norm), total)
        return total

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("OffloadedAdamW.step: a closure is not supported")
        if self._masters_from_params:
            for m, p in zip(self.masters, self.params):
                m.copy_(p.detach())
            self._masters_from_params = False
        factor = self._clip_factor()
        for i, m in enumerate(self.masters):
            m.grad = self.host_grads[i] if self._arrived[i] else None
        if self._cuda:
            # the copies back must not overtake kernels still reading the parameters (GPU-side order, no stall)
            self._h2d.wait_stream(torch.cuda.current_stream(self.device))
        for b in range(len(self.buckets)):
            if self._cuda and self._counts[b]:  # a bucket with unused parameters: its last copies so far
                self._record_event(b)
        jobs = [self._worker.submit(self._step_bucket, b, factor) for b in range(len(self.buckets))]
        for job in jobs:
            job.result()
        if self._cuda:
            torch.cuda.current_stream(self.device).wait_stream(self._h2d)  # before the next forward
        self._arrived = [False] * len(self.params)
        self._counts = [0] * len(self.buckets)
        self._events = [None] * len(self.buckets)
        self._copy_grads = True
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self) -> dict:
        """AdamW's layout (fastlm.optim.AdamW over the fp32 masters); bf16 parameters add their "master"."""
        sd = self.inner.state_dict()
        for i, p in enumerate(self.params):
            if p.dtype != torch.float32 and i in sd["state"]:
                sd["state"][i] = dict(sd["state"][i]) | {"master": self.masters[i].clone()}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        # on the CPU, where the masters are (a checkpoint may have been loaded onto the GPU)
        state_dict = {**state_dict, "state": {k: {key: t.cpu() if torch.is_tensor(t) else t for key, t in v.items()}
                                              for k, v in state_dict["state"].items()}}
        masters = {k: v.pop("master") for k, v in state_dict["state"].items() if "master" in v}
        self.inner.load_state_dict(state_dict)
        with torch.no_grad():
            for i, (m, p) in enumerate(zip(self.masters, self.params)):
                m.copy_(masters[i] if i in masters else p.detach())
        self._masters_from_params = False

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._worker.shutdown(wait=True)

    # ------------------------------------------------------------------ internals

    def _grad_ready(self, i: int, p: torch.Tensor) -> None:
        """A post-accumulate-grad hook: start copying p.grad to the host (unless final_backward(False)
        said more micro-batches follow)."""
        if not self._copy_grads:
            return
        host = self.host_grads[i]
        if self._cuda:
            self._d2h.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._d2h):
                host.copy_(p.grad.detach().to(torch.float32), non_blocking=True)
                p.grad.record_stream(self._d2h)  # its memory is not reused before the copy is done
        else:
            host.copy_(p.grad.detach())
        self._arrived[i] = True
        b = self._bucket_of[i]
        self._counts[b] += 1
        if self._counts[b] == len(self.buckets[b]):
            if self._cuda:
                self._record_event(b)
            self._counts[b] = 0

    def _record_event(self, b: int) -> None:
        event = torch.cuda.Event()
        event.record(self._d2h)
        self._events[b] = event

    def _clip_factor(self) -> torch.Tensor | None:
        """torch.nn.utils.clip_grad_norm_'s factor min(1, max_norm / (norm + 1e-6)), as a CPU fp32 scalar."""
        clip, self._clip = self._clip, None
        if clip is None or clip[0] == float("inf"):
            return None
        max_norm, total = clip
        return torch.clamp(max_norm / (total + 1e-6), max=1.0).to("cpu", torch.float32)

    def _step_bucket(self, b: int, factor: torch.Tensor | None) -> None:
        bucket = [i for i in self.buckets[b] if self._arrived[i]]
        if not bucket:
            return
        if self._events[b] is not None:
            self._events[b].synchronize()  # this bucket's gradients are on the host
        grads = [self.host_grads[i] for i in bucket]
        if factor is not None:
            torch._foreach_mul_(grads, factor)
        self.inner.step_params([self.masters[i] for i in bucket])
        if self._cuda:
            with torch.cuda.stream(self._h2d):
                for i in bucket:
                    self.params[i].detach().copy_(self.masters[i], non_blocking=True)
        else:
            for i in bucket:
                self.params[i].detach().copy_(self.masters[i])


def _buckets(numels: list[int], bucket_elems: int) -> list[list[int]]:
    """Parameter indices in reverse order, cut into buckets of at least bucket_elems elements (the last may
    be smaller)."""
    buckets, current, size = [], [], 0
    for i in reversed(range(len(numels))):
        current.append(i)
        size += numels[i]
        if size >= bucket_elems:
            buckets.append(current)
            current, size = [], 0
    if current:
        buckets.append(current)
    return buckets
