"""One optimizer step, shared by `fastlm train`, `fastlm finetune` and other trainers.

    step = TrainStep(pm, optimizer, loss_of=lm_loss, precision="bf16", device=device, grad_clip=1.0)
    result = step(micro_batches)            # StepResult(loss, grad_norm, extras)

Gradient accumulation over the micro-batches (each loss divided by their count: every micro-batch
has the same number of examples, so the gradient is that of the global batch's mean loss; with
weigh_by_rows, as parallel.dp_shares = "dynamic" sets, each loss is weighted by its share of the
rows instead, since a rank's last micro-batch may be smaller), mixed
precision and fp16 loss scaling, data-parallel communication only in the last micro-batch's
backward, the pipeline schedule when the model is pipelined, clipping over every dp/tp/pp rank
(fastlm.parallel.ParallelModel), the optimizer step, and local SGD's parameter averaging.

A hook replaces one micro-batch's backward (adversarial training and DP-SGD do; distillation
plugs in the same way): `micro_backward(loss_fn, scale, clean_context, final_context, batch) ->
(loss, extras)`, where loss_fn() computes the micro-batch's loss, `scale` multiplies what is
back-propagated, final_context must wrap the backward that communicates, and batch is the
micro-batch (on the device). `after_grad_sync()` runs once the gradients are reduced, before
clipping and the optimizer step (DP-SGD adds its noise there). `after_step()` runs after every
optimizer step (pruning re-applies its masks there: fastlm.prune.mask_keeper).
"""
from __future__ import annotations

from collections.abc import Callable
import time
from contextlib import nullcontext
from typing import NamedTuple

import torch

from fastlm.data.inputs import batch_rows, model_inputs


class StepResult(NamedTuple):
    loss: torch.Tensor          # this rank's part of the mean loss (detached; fastlm.parallel reduces it)
    grad_norm: torch.Tensor     # the whole model's gradient norm before clipping
    extras: dict                # what a hook measured (e.g. "adversarial_loss"), detached tensors


def lm_loss(runner, batch) -> torch.Tensor:
    """A language-modelling micro-batch's mean loss (GPT: the fused head + loss; encoders: masked LM)."""
    return runner(**model_inputs(batch))[1]


def task_loss(runner, batch) -> torch.Tensor:
    """A fine-tuning task model's loss: forward(batch) returns a dict with "loss"."""
    return runner(batch)["loss"].float()


def to_device(batch, device: torch.device):
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return batch.to(device, non_blocking=True)


def autocast_for(precision: str, device: torch.device):
    """The forward pass context: nothing for fp32, autocast to bf16/fp16 otherwise."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class TrainStep:
    def __init__(self, pm, optimizer, *, device: torch.device, precision: str = "fp32", grad_clip: float = 0.0,
                 loss_of: Callable = lm_loss, micro_backward: Callable | None = None, local_sgd_every: int = 0,
                 after_grad_sync: Callable[[], None] | None = None, after_step: Callable[[], None] | None = None,
                 max_staleness: int | None = None):
        """pm: a fastlm.parallel.ParallelModel; grad_clip 0 measures the norm and clips nothing;
        local_sgd_every > 0: the data-parallel ranks step on their own and average parameters every
        that many steps (see sync()); with max_staleness (parallel.sync = "async") that averaging runs
        in the background (fastlm.parallel.async_averaging)."""
        self.pm, self.optimizer, self.device = pm, optimizer, device
        self.autocast = autocast_for(precision, device)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.max_norm = grad_clip or float("inf")
        self.loss_of, self.micro_backward, self.after_grad_sync = loss_of, micro_backward, after_grad_sync
        self.local_sgd_every = local_sgd_every if pm.dp is not None else 0
        self.after_step = after_step
        self.averager = None
        if max_staleness is not None and self.local_sgd_every > 1:
            from fastlm.parallel.async_averaging import AsyncAverager

            self.averager = AsyncAverager(pm.dp, optimizer, max_staleness)
        # parallel.sync = "param_server": each rank's own gradient goes to the servers (optimizer.step() pushes it)
        self.pushes_gradients = getattr(optimizer, "pushes_gradients", False)
        self.compute_seconds = 0.0  # the last step's forwards and backwards (not the wait for the all-reduce)
        self.weigh_by_rows = False  # micro-batches of unequal size (fastlm.parallel.dynamic_shares)

    def __call__(self, micro_batches: list, sync: bool = True) -> StepResult:
        """Forward and backward of every micro-batch, clip, step. sync=False (local SGD between
        synchronizations): no gradient communication at all."""
        started = time.perf_counter()
        if self.pm.pipe is not None:
            no_sync = self.pm.dp.no_sync if self.pm.dp is not None else None
            loss, extras = self.pm.pipe.train_step(micro_batches, no_sync=no_sync), {}
        else:
            loss, extras = self._accumulate(micro_batches, sync and not self.pushes_gradients)
        self.compute_seconds = time.perf_counter() - started
        self.pm.finish_grad_sync()
        if self.after_grad_sync is not None:
            self.after_grad_sync()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        # An optimizer that keeps its own gradient copies (optimizer offload) measures and clips them itself.
        clip = getattr(self.optimizer, "clip_grad_norm_", None) or self.pm.clip_grad_norm_
        grad_norm = clip(self.max_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.after_step is not None:
            self.after_step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.averager is not None:
            self.averager.step_done()  # applies the background averages that arrived or are due
        return StepResult(loss, grad_norm, extras)

    def sync(self, done: int, total: int) -> bool:
        """Whether step `done` (1-based) of `total` communicates gradients (always, unless local SGD)."""
        every = self.local_sgd_every
        if self.pushes_gradients:
            return done == total  # the last step pulls the servers' parameters (after_sync)
        return not every or done % every == 0 or done == total

    def after_sync(self, final: bool = False) -> None:
        """Local SGD: average the parameters the ranks stepped on their own since the last sync (async: start
        averaging them; `final`, the last step: wait for every average in flight)."""
        if self.pushes_gradients:
            if final:
                self.optimizer.drain()
        elif self.averager is not None:
            if final:  # apply the earlier averages first: the last one then leaves every rank with the same model
                self.averager.drain()
            self.averager.launch()
            if final:
                self.averager.drain()
        elif self.local_sgd_every > 1:
            self.pm.dp.average_parameters(self.optimizer)

    def drain(self) -> None:
        """Wait for the background parameter averages in flight (sync = "async") or the pushes to the parameter
        servers (sync = "param_server"), e.g. before a checkpoint."""
        if self.averager is not None:
            self.averager.drain()
        if self.pushes_gradients:
            self.optimizer.drain()  # every worker then holds the servers' parameters

    def _accumulate(self, micro_batches: list, sync: bool) -> tuple[torch.Tensor, dict]:
        n = len(micro_batches)
        rows = [batch_rows(b) for b in micro_batches] if self.weigh_by_rows else [None]
        total = torch.zeros((), device=self.device)
        extras: dict = {}
        final_backward = getattr(self.optimizer, "final_backward", None)  # optimizer offload: copy grads once
        for i, batch in enumerate(micro_batches):
            # 1 / the micro-batch's share of the rows (exactly n when they are of one size), or n
            divisor = sum(rows) / rows[i] if None not in rows and rows[i] else n
            batch = to_device(batch, self.device)
            communicate = sync and i == n - 1  # gradients are reduced in the last backward only
            if final_backward is not None:
                final_backward(i == n - 1)

            def loss_fn(batch=batch):
                with self.autocast:
                    return self.loss_of(self.pm.runner, batch)

            if self.micro_backward is not None:
                scale = (self.scaler.get_scale() if self.scaler is not None else 1.0) / divisor
                loss, more = self.micro_backward(loss_fn, scale, self.pm.no_sync(),
                                                 self.pm.no_sync(local=not communicate), batch)
                loss = loss / divisor
                for key, value in more.items():
                    extras[key] = extras.get(key, 0.0) + value.detach() / divisor
            else:
                with self.pm.no_sync(local=not communicate):
                    loss = loss_fn() / divisor
                    (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            total += loss.detach()
        return total, extras
