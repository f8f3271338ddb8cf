"""The step loop every training entry point runs: learning rate, one TrainStep, metrics and the
progress bar, evaluation and checkpoints at their steps.

    result = run_steps(step, next_batches, schedule, hooks, metrics, bar)

What differs between language-model training and a fine-tuning task (the batches, the
evaluation, the throughput unit) comes in as callables; the loop itself is written once.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastlm.train.errors import FastlmError
from fastlm.train.optim import set_lr


@dataclass
class Schedule:
    start: int                        # the first step to run (0, or the resumed checkpoint's step)
    steps: int                        # the last step
    lr_at: Callable[[int], float]     # learning rate of a (0-based) step
    log_every: int
    eval_every: int                   # 0: only at the end
    throughput: str                   # the metrics key, e.g. "tokens_per_s"
    units_per_step: int               # tokens (or examples) per optimizer step


@dataclass
class Hooks:
    evaluate: Callable[[int, object], dict]   # (step, progress bar) -> result; logs it itself
    save: Callable[[int], None]               # (step) -> a checkpoint when due
    started: Callable[[], None] = lambda: None  # after the first optimizer step
    record: Callable[[int], dict] = lambda done: {}  # more fields of a logged step's metrics line


def run_steps(step, next_batches: Callable[[], list], schedule: Schedule, hooks: Hooks, metrics, bar) -> dict | None:
    """Run steps schedule.start .. schedule.steps; returns the last evaluation's result (None if none ran)."""
    s, result = schedule, None
    step_time, timed = 0.0, 0  # since the last logged step (evaluation excluded)
    for index in range(s.start, s.steps):
        t0 = time.perf_counter()
        done = index + 1
        lr = s.lr_at(index)
        set_lr(step.optimizer, lr)
        sync = step.sync(done, s.steps)
        out = step(next_batches(), sync)
        if sync:
            step.after_sync(final=done == s.steps)
        hooks.started()
        log_now = done % s.log_every == 0 or done == s.steps
        if log_now:
            loss = step.pm.mean_loss(out.loss).item()  # a collective under pp / dp; waits for the GPU
        step_time, timed = step_time + time.perf_counter() - t0, timed + 1
        if log_now:
            if not math.isfinite(loss):
                raise FastlmError(f"the loss became {loss} at step {done} (try a lower train.lr, "
                                  f"or train.precision = \"fp32\")")
            rate = s.units_per_step * timed / step_time
            step_time, timed = 0.0, 0
            metrics.log({"step": done, "loss": loss, "lr": lr, "grad_norm": out.grad_norm.item(), s.throughput: rate,
                         **{k: v.item() for k, v in out.extras.items()}, **hooks.record(done)})
            bar.set_postfix(loss=f"{loss:.3f}", rate=f"{rate:,.0f}", refresh=False)
        bar.update(1)
        if done == s.steps or (s.eval_every and done % s.eval_every == 0):
            result = hooks.evaluate(done, bar)
        hooks.save(done)
    return result
