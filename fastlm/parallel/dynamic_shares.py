"""parallel.dp_shares = "dynamic": re-solve each rank's share of the global batch so the ranks finish together.

On devices of different speed, equal shares make every step as slow as the slowest rank. Every
`rebalance_every` steps the ranks all-gather the compute seconds and samples each measured since
the last rebalance (the forward and backward only, not the wait for the gradient all-reduce), and
every rank solves the same new shares from the same numbers:

    target_r = global_batch * speed_r / sum(speed)        speed_r = samples_r / seconds_r
    shares   = current + lam * (target - current)          lam <= 1 keeps every move within
                                                           max_change * global_batch samples
    rounded to integers that sum to the global batch (largest remainders), each at least 1.

The global batch of a step does not depend on the shares (fastlm.data.loader draws it from the seed
and the step; a rank takes a slice), and the gradient stays the sample-weighted average
(DataParallel.set_shares; each micro-batch weighted by its rows), so training equals one process
whatever the shares. The shares are part of the data loader's state, hence of every checkpoint.

A test-only slowdown (env FASTLM_TEST_SLOW_RANK="RANK:SECONDS", a sleep of that many seconds per
sample on that rank) lets tests and benchmarks show the shares converging to the speed ratio.
"""
from __future__ import annotations

import math
import os
import time

import torch
import torch.distributed as dist

from fastlm.data.inputs import batch_rows
from fastlm.data.loader import equal_shares

MAX_CHANGE = 0.25  # the most a share moves in one rebalance, as a fraction of the global batch
SLOW_RANK_ENV = "FASTLM_TEST_SLOW_RANK"


def solve_shares(current: list[int], seconds: list[float], samples: list[int], max_change: float = MAX_CHANGE) -> list[int]:
    """New integer shares (summing to sum(current), each >= 1) moved toward the measured speeds."""
    total, ranks = sum(current), len(current)
    if ranks == 1 or any(s <= 0 for s in seconds) or any(n <= 0 for n in samples):
        return list(current)  # nothing measured on some rank: keep the shares
    speeds = [n / s for n, s in zip(samples, seconds)]
    target = [total * v / sum(speeds) for v in speeds]
    largest_move = max(abs(t - c) for t, c in zip(target, current))
    lam = min(1.0, max_change * total / largest_move) if largest_move > 0 else 0.0
    wanted = [max(1.0, c + lam * (t - c)) for t, c in zip(target, current)]
    scale = (total - ranks) / sum(w - 1.0 for w in wanted) if sum(wanted) > ranks else 0.0
    wanted = [1.0 + (w - 1.0) * scale for w in wanted]  # sum(wanted) == total, each >= 1
    shares = [math.floor(w) for w in wanted]
    by_remainder = sorted(range(ranks), key=lambda r: (shares[r] - wanted[r], r))  # largest remainder first
    for r in by_remainder[:total - sum(shares)]:
        shares[r] += 1
    return shares


def slowdown_per_sample(rank: int) -> float:
    """Seconds of sleep per sample for this rank from FASTLM_TEST_SLOW_RANK (tests and benchmarks only)."""
    spec = os.environ.get(SLOW_RANK_ENV)
    if not spec:
        return 0.0
    slow_rank, _, seconds = spec.partition(":")
    try:
        return float(seconds) if int(slow_rank) == rank else 0.0
    except ValueError:
        raise ValueError(f"{SLOW_RANK_ENV}={spec!r}: expected RANK:SECONDS_PER_SAMPLE") from None


def dynamic_shares_for_run(config, pm, loader, step, mesh):
    """(next_batches for run_steps, metrics fields of a logged step) for a run; loader.next and nothing more
    unless parallel.dp_shares = "dynamic"."""
    delay = slowdown_per_sample(loader.rank)
    if delay:  # a test or benchmark slows this rank down, whatever the shares
        step.loss_of = _slowed(step.loss_of, delay)
    if config.parallel.dp_shares != "dynamic":
        return loader.next, lambda: {}
    balance = DynamicShares(loader, pm.dp, config.parallel.rebalance_every,
                            group=mesh.dp_group if mesh is not None else None)
    step.weigh_by_rows = True  # a rank's last micro-batch may now be smaller than the others
    return balance.wrap(step, loader.next), lambda: {"dp_shares": list(balance.shares)}


class DynamicShares:
    """Measures this rank's compute per sample and rebalances the loader's and DataParallel's shares.

    next_batches = DynamicShares(loader, dp, every=50, group=mesh.dp_group).wrap(step, loader.next)
    """

    def __init__(self, loader, data_parallel, every: int, group=None, max_change: float = MAX_CHANGE):
        self.loader, self.dp, self.every, self.group, self.max_change = loader, data_parallel, every, group, max_change
        if not loader.dynamic_shares:  # a loader built without dynamic_shares=True starts from equal shares
            loader.set_shares(equal_shares(loader.global_batch_size, loader.world_size))
        self._adopt(loader.shares)
        self.seconds, self.samples = 0.0, 0  # since the last rebalance
        self.history: list[list[int]] = [list(self.shares)]

    def record(self, seconds: float, samples: int) -> None:
        self.seconds += seconds
        self.samples += samples

    def rebalance(self) -> list[int]:
        """All ranks: gather the measurements, solve and apply the new shares (a collective)."""
        mine = torch.tensor([self.seconds, float(self.samples)], dtype=torch.float64)
        if self.group is not None and dist.is_initialized() and dist.get_world_size(self.group) > 1:
            gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(self.group))]
            dist.all_gather(gathered, mine, group=self.group)
        else:
            gathered = [mine]
        seconds = [float(g[0]) for g in gathered]
        samples = [int(g[1]) for g in gathered]
        new = solve_shares(self.shares, seconds, samples, self.max_change)
        if new != self.shares:
            self.shares = new
            self.loader.set_shares(new)
            if self.dp is not None:
                self.dp.set_shares(new)
        self.history.append(list(new))
        self.seconds, self.samples = 0.0, 0
        return new

    def wrap(self, step, next_batches):
        """next_batches for run_steps: records the previous step's compute time, rebalances every `every` steps."""
        state = {"rows": 0, "warm": False}

        def next_with_rebalance():
            if self.loader.shares != self.shares:  # resumed: the checkpoint's loader state brought its shares
                self._adopt(self.loader.shares)
            if state["rows"]:
                if state["warm"]:  # the first step of a process (allocations, kernel choices) is not its speed
                    self.record(step.compute_seconds, state["rows"])
                state["warm"] = True
                if self.loader.step % self.every == 0:
                    self.rebalance()
            batches = next_batches()
            state["rows"] = sum(batch_rows(b) or 0 for b in batches)
            return batches
        return next_with_rebalance

    def _adopt(self, shares: list[int]) -> None:
        self.shares = list(shares)
        if self.dp is not None:
            self.dp.set_shares(self.shares)


def _slowed(loss_of, seconds_per_sample: float):
    def slowed_loss_of(runner, batch):
        time.sleep(seconds_per_sample * (batch_rows(batch) or 0))
        return loss_of(runner, batch)
    return slowed_loss_of
