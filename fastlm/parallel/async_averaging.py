"""parallel.sync = "async": local SGD whose parameter averaging runs in the background.

Local SGD (sync = "local_sgd") stops every rank at each sync step until the average of the
parameters (and the optimizer's per-parameter state) has been all-reduced. With sync = "async" the
ranks snapshot those tensors at the sync step, start the all-reduce of the snapshot and keep
stepping on their own gradients. When the average has arrived, or when it is `max_staleness` steps
old (then it is waited for), each tensor becomes

    average(snapshots) + (current - snapshot)

the ranks' average at the sync step plus this rank's own progress since. max_staleness = 0 waits
at once (current == snapshot): local SGD exactly.

The all-reduces run one after another on a worker thread, over a process group of their own, so
they never interleave with the training's other collectives and every rank issues them in the
same order. A checkpoint first waits for the averages in flight (drain), so a resumed run starts
from the state the uninterrupted one had. FASTLM_TEST_COMM_DELAY (seconds) delays every parameter
average, here and in local SGD, to show what overlapping hides (tests and benchmarks).
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

COMM_DELAY_ENV = "FASTLM_TEST_COMM_DELAY"


def injected_comm_delay() -> float:
    """Seconds to wait before each parameter average (FASTLM_TEST_COMM_DELAY; 0 when unset)."""
    value = os.environ.get(COMM_DELAY_ENV)
    try:
        return float(value) if value else 0.0
    except ValueError:
        raise ValueError(f"{COMM_DELAY_ENV}={value!r}: expected a number of seconds") from None


@dataclass
class _InFlight:
    launched_at: int                     # the count of optimizer steps when the snapshot was taken
    parts: list                          # (tensors, snapshot, averaged) per dtype
    future: concurrent.futures.Future


class AsyncAverager:
    """Background parameter averaging for a fastlm DataParallel (see the module docstring)."""

    def __init__(self, dp, optimizer, max_staleness: int):
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        self.dp, self.optimizer, self.max_staleness = dp, optimizer, max_staleness
        # Every rank creates it, in the same order (sync = "async" runs with data parallelism only).
        self.group = dist.new_group(ranks=dp.ranks) if dp.world_size > 1 else None
        self.worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastlm-average")
        self.in_flight: collections.deque[_InFlight] = collections.deque()
        self.steps = 0
        self.delay = injected_comm_delay()

    def step_done(self) -> None:
        """After every optimizer step: count it and apply the averages that arrived or are due."""
        self.steps += 1
        self.poll()

    def launch(self) -> None:
        """At a sync step: snapshot the tensors and start averaging them."""
        if self.dp.world_size == 1:
            return
        parts = []
        with torch.no_grad():
            for tensors in self.dp.averaged_tensors(self.optimizer):
                snapshot = torch._utils._flatten_dense_tensors(tensors)
                parts.append((tensors, snapshot, snapshot * self.dp._weight))
        future = self.worker.submit(self._all_reduce, [averaged for _, _, averaged in parts])
        self.in_flight.append(_InFlight(self.steps, parts, future))
        self.poll()

    def poll(self) -> None:
        while self.in_flight and (self.in_flight[0].future.done()
                                  or self.steps - self.in_flight[0].launched_at >= self.max_staleness):
            self._apply(self.in_flight.popleft())

    def drain(self) -> None:
        """Wait for every average in flight and apply it (before a checkpoint, and at the end)."""
        while self.in_flight:
            self._apply(self.in_flight.popleft())

    def close(self) -> None:
        self.drain()
        self.worker.shutdown()

    def _all_reduce(self, flats: list[torch.Tensor]) -> None:
        if self.delay:
            time.sleep(self.delay)
        for flat in flats:
            dist.all_reduce(flat, group=self.group)

    def _apply(self, pending: _InFlight) -> None:
        pending.future.result()  # waits; re-raises a failed all-reduce here
        with torch.no_grad():
            for tensors, snapshot, averaged in pending.parts:
                current = torch._utils._flatten_dense_tensors(tensors)
                updated = averaged.add_(current.sub_(snapshot))
                torch._foreach_copy_(tensors, torch._utils._unflatten_dense_tensors(updated, tensors))
