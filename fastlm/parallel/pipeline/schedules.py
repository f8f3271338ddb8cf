"""Pipeline schedules: the order in which each rank runs forward (F) and backward (B) passes.

    actions = make_schedule("1f1b", pp=4, num_microbatches=8, rank=0)   # [F0, F1, F2, F3, B0, F4, B1, ...]
    simulate(all_ranks)   # checks the order runs without deadlock; times, bubble and live activations

A schedule is a list of Action(kind, microbatch, chunk) per rank: plain data, so it is tested
without processes. Rank r's chunk c is pipeline stage c * pp + r (Megatron's interleaved layout;
with one chunk per rank, stage r). F of (mb, stage s) needs F of (mb, s - 1); B of (mb, s) needs
F of (mb, s) and B of (mb, s + 1).

- GPipe: every forward, then every backward. Keeps all m micro-batches' activations.
- 1F1B (PipeDream-flush / Megatron): rank r runs pp - r - 1 warm-up forwards, then alternates one
  forward and one backward, then drains the backwards. Keeps at most pp - r micro-batches live.
- Interleaved 1F1B (Megatron): v chunks (virtual stages) per rank; micro-batches go through the
  chunks in groups of pp, which shrinks the bubble by v. Needs m to be a multiple of pp.
"""
from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("gpipe", "1f1b", "interleaved")


@dataclass(frozen=True)
class Action:
    kind: str        # "F" or "B"
    microbatch: int
    chunk: int = 0   # the rank's model chunk (virtual stage); 0 without interleaving

    def __repr__(self) -> str:
        return f"{self.kind}{self.microbatch}" + (f".{self.chunk}" if self.chunk else "")


def check_layout(schedule: str, pp: int, num_microbatches: int, virtual_stages: int = 1) -> None:
    """ValueError naming the problem when the schedule cannot run this layout."""
    if schedule not in SCHEDULES:
        raise ValueError(f"pipeline schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if pp < 1 or num_microbatches < 1 or virtual_stages < 1:
        raise ValueError(f"pipeline: pp = {pp}, micro-batches = {num_microbatches} and virtual stages = "
                         f"{virtual_stages} must be positive")
    if schedule != "interleaved" and virtual_stages != 1:
        raise ValueError(f"pipeline schedule {schedule!r} runs one stage per rank: virtual_stages = "
                         f"{virtual_stages} needs schedule = \"interleaved\"")
    if schedule == "interleaved" and num_microbatches % pp:
        raise ValueError(f"interleaved pipeline schedule: the number of micro-batches ({num_microbatches}) must "
                         f"be a multiple of pp = {pp} (at least pp); micro-batches = global_batch_size / "
                         f"(micro_batch_size * dp)")


def gpipe(pp: int, num_microbatches: int, rank: int) -> list[Action]:
    m = num_microbatches
    return [Action("F", i) for i in range(m)] + [Action("B", i) for i in range(m)]


def one_f_one_b(pp: int, num_microbatches: int, rank: int) -> list[Action]:
    m = num_microbatches
    warmup = min(pp - rank - 1, m)
    actions = [Action("F", i) for i in range(warmup)]
    for i in range(m - warmup):          # steady state: one forward, one backward
        actions += [Action("F", warmup + i), Action("B", i)]
    actions += [Action("B", i) for i in range(m - warmup, m)]   # cool-down
    return actions


def interleaved_1f1b(pp: int, num_microbatches: int, rank: int, virtual_stages: int) -> list[Action]:
    """Megatron's interleaved schedule: the k-th forward (backward) of a rank is micro-batch
    k // (pp * v) * pp + k % pp on chunk (k // pp) % v (backward: the chunks in reverse)."""
    m, v = num_microbatches, virtual_stages
    check_layout("interleaved", pp, m, v)
    total = m * v

    def unit(k: int, backward: bool) -> Action:
        chunk = (k // pp) % v
        mb = k // (pp * v) * pp + k % pp
        return Action("B" if backward else "F", mb, v - 1 - chunk if backward else chunk)

    if m == pp:
        warmup = total  # too few micro-batches for a steady state: all forwards first
    else:
        warmup = min(total, (pp - rank - 1) * 2 + (v - 1) * pp)
    actions = [unit(k, False) for k in range(warmup)]
    for k in range(total - warmup):
        actions += [unit(warmup + k, False), unit(k, True)]
    actions += [unit(k, True) for k in range(total - warmup, total)]
    return actions


def make_schedule(schedule: str, pp: int, num_microbatches: int, rank: int, virtual_stages: int = 1) -> list[Action]:
    """The actions of `rank`, in order."""
    check_layout(schedule, pp, num_microbatches, virtual_stages)
    if not 0 <= rank < pp:
        raise ValueError(f"pipeline rank {rank} is outside 0 .. {pp - 1}")
    if schedule == "gpipe":
        return gpipe(pp, num_microbatches, rank)
    if schedule == "1f1b":
        return one_f_one_b(pp, num_microbatches, rank)
    return interleaved_1f1b(pp, num_microbatches, rank, virtual_stages)


def stage_of(rank: int, chunk: int, pp: int) -> int:
    return chunk * pp + rank


def rank_chunk_of(stage: int, pp: int) -> tuple[int, int]:
    return stage % pp, stage // pp


# ---------------------------------------------------------------- checking and simulating

@dataclass
class Simulation:
    makespan: float               # time units until the last action ends
    busy: list[float]             # per rank: time spent computing
    peak_live: list[int]          # per rank: most micro-batch activations held at once (summed over chunks)
    start: dict                   # (rank, action) -> start time

    @property
    def bubble(self) -> float:
        """The idle fraction of all ranks' time."""
        return 1.0 - sum(self.busy) / (self.makespan * len(self.busy))


def simulate(schedules: list[list[Action]], num_microbatches: int, virtual_stages: int = 1,
             forward_time: float = 1.0, backward_time: float = 2.0) -> Simulation:
    """Run every rank's actions in order, each as soon as its inputs exist (sends never block).

    Raises ValueError when the schedules are incomplete (each (micro-batch, chunk) must get exactly
    one F and one B per rank, F first) or deadlock. Transfers take no time."""
    pp, m, v = len(schedules), num_microbatches, virtual_stages
    stages = pp * v
    for r, actions in enumerate(schedules):
        seen: set = set()
        for a in actions:
            if a.kind not in ("F", "B") or not (0 <= a.microbatch < m and 0 <= a.chunk < v):
                raise ValueError(f"rank {r}: invalid action {a!r}")
            if a in seen:
                raise ValueError(f"rank {r}: {a!r} appears twice")
            if a.kind == "B" and Action("F", a.microbatch, a.chunk) not in seen:
                raise ValueError(f"rank {r}: {a!r} comes before its forward")
            seen.add(a)
        if len(seen) != 2 * m * v:
            raise ValueError(f"rank {r}: {len(seen)} actions, expected {2 * m * v} (F and B of {m} micro-batches "
                             f"x {v} chunks)")
    done: dict = {}   # (kind, mb, stage) -> end time
    clock = [0.0] * pp
    pos = [0] * pp
    live, peak = [0] * pp, [0] * pp
    busy = [0.0] * pp
    start = {}
    remaining = sum(len(a) for a in schedules)
    while remaining:
        progressed = False
        for r in range(pp):
            while pos[r] < len(schedules[r]):
                a = schedules[r][pos[r]]
                s = stage_of(r, a.chunk, pp)
                if a.kind == "F":
                    deps = [("F", a.microbatch, s - 1)] if s > 0 else []
                else:
                    deps = [("F", a.microbatch, s)] + ([("B", a.microbatch, s + 1)] if s < stages - 1 else [])
                if any(d not in done for d in deps):
                    break
                t0 = max([clock[r]] + [done[d] for d in deps])
                cost = forward_time if a.kind == "F" else backward_time
                clock[r] = t0 + cost
                busy[r] += cost
                done[(a.kind, a.microbatch, s)] = clock[r]
                start[(r, a)] = t0
                live[r] += 1 if a.kind == "F" else -1
                peak[r] = max(peak[r], live[r])
                pos[r] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            stuck = {r: schedules[r][pos[r]] for r in range(pp) if pos[r] < len(schedules[r])}
            raise ValueError(f"pipeline schedule deadlocks: each rank waits ({stuck})")
    return Simulation(makespan=max(clock), busy=busy, peak_live=peak, start=start)


def theoretical_bubble(pp: int, num_microbatches: int, virtual_stages: int = 1) -> float:
    """(p - 1) / (m * v + p - 1): the idle fraction of a flushed pipeline (Megatron, Narayanan et al. 2021)."""
    return (pp - 1) / (num_microbatches * virtual_stages + pp - 1)


def transfers(schedules: list[list[Action]], virtual_stages: int = 1) -> tuple[dict, dict]:
    """The messages between each ordered pair of ranks, as the sender posts them and as the receiver
    waits for them: ({(src, dst): [(kind, microbatch, stage), ...]}, same for the receives).

    They must be in the same order (check_transfer_order): NCCL matches point-to-point messages in
    order (gloo by tag, which the executor also sets)."""
    pp = len(schedules)
    last = pp * virtual_stages - 1
    sends: dict = {}
    recvs: dict = {}
    for r, actions in enumerate(schedules):
        for a in actions:
            s = stage_of(r, a.chunk, pp)
            if a.kind == "F":
                if s > 0:
                    recvs.setdefault((rank_chunk_of(s - 1, pp)[0], r), []).append(("activation", a.microbatch, s))
                if s < last:
                    sends.setdefault((r, rank_chunk_of(s + 1, pp)[0]), []).append(("activation", a.microbatch, s + 1))
            else:
                if s < last:
                    recvs.setdefault((rank_chunk_of(s + 1, pp)[0], r), []).append(("grad", a.microbatch, s))
                if s > 0:
                    sends.setdefault((r, rank_chunk_of(s - 1, pp)[0]), []).append(("grad", a.microbatch, s - 1))
    return sends, recvs


def check_transfer_order(schedules: list[list[Action]], virtual_stages: int = 1) -> None:
    """ValueError when some pair of ranks would receive messages in another order than they are sent."""
    sends, recvs = transfers(schedules, virtual_stages)
    for pair in sorted(set(sends) | set(recvs)):
        if sends.get(pair) != recvs.get(pair):
            raise ValueError(f"pipeline schedule: rank {pair[0]} sends {sends.get(pair)} to rank {pair[1]}, which "
                             f"receives {recvs.get(pair)}")
