"""The device mesh: dp x tp x pp process groups, built once from the torchrun environment.

    mesh = init_mesh(dp="auto")            # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, ...
    mesh.dp_group, mesh.dp_rank, mesh.dp   # what DataParallel uses
    mesh.check_same("config", config.to_dict())   # every rank runs the same config
    mesh.check_same_weights(model)         # ... and starts from the same weights (a checksum)

Rank layout (Megatron order): tp varies fastest, then dp, then pp:
rank = (pp_rank * dp + dp_rank) * tp + tp_rank. Backend: NCCL for CUDA, gloo for CPU.

Collectives time out after `timeout_s`. A failed or timed-out collective raises CollectiveError,
whose message names the collective and the rank that did not take part: every rank keeps a
heartbeat (a counter and the number of its last collective) in the launcher's key-value store,
so a survivor can tell a dead rank (its heartbeat stopped) from a stuck one (it is behind).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


class CollectiveError(RuntimeError):
    """A collective failed or timed out; the message names the collective and the missing rank."""


class MeshError(ValueError):
    """The processes disagree (config, weights) or the mesh does not fit the world size."""


@dataclass
class Mesh:
    dp: int
    tp: int
    pp: int
    rank: int
    world_size: int
    device: torch.device
    backend: str | None
    timeout_s: float
    dp_rank: int = 0
    tp_rank: int = 0
    pp_rank: int = 0
    dp_group: object = None   # a ProcessGroup (None when world_size == 1)
    tp_group: object = None
    pp_group: object = None
    dp_ranks: list[int] = field(default_factory=list)  # global ranks of this rank's dp group

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def check_same(self, what: str, value) -> None:
        """Every rank must pass an equal (JSON-serializable) value; otherwise MeshError naming the rank."""
        if not self.is_distributed:
            return
        digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
        _check_equal(what, digest, None, self.rank, describe=lambda d: d[:12])

    def check_same_weights(self, module: torch.nn.Module) -> None:
        """The replicas of a dp group must start from the same weights (compared by checksum)."""
        if self.dp > 1:
            _check_equal("initial weights", weights_checksum(module), self.dp_group, self.rank,
                         describe=lambda d: d[:12],
                         hint="seed every rank the same (torch.manual_seed) before building the model")


_MESH: Mesh | None = None


def current_mesh() -> Mesh | None:
    return _MESH


def init_mesh(dp: int | str | None = "auto", tp: int = 1, pp: int = 1, *, timeout_s: float = 300.0,
              backend: str | None = None) -> Mesh:
    """Initialize torch.distributed from the environment (torchrun) and build every group once.

    dp="auto" (or None): world size / (tp * pp). Called again with the same sizes, returns the
    same mesh. Without a torchrun environment (no WORLD_SIZE), a one-process mesh.
    """
    global _MESH
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    dp = _check_sizes(dp, tp, pp, world, timeout_s)
    if _MESH is not None and (_MESH.dp, _MESH.tp, _MESH.pp) == (dp, tp, pp):
        return _MESH
    if _MESH is not None:
        raise MeshError(f"init_mesh: a mesh dp={_MESH.dp}, tp={_MESH.tp}, pp={_MESH.pp} exists already; "
                        f"the groups are built once per process")

    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    else:
        device = torch.device("cpu")
    if world == 1 and not (dist.is_available() and dist.is_initialized()):
        _MESH = Mesh(dp=1, tp=1, pp=1, rank=0, world_size=1, device=device, backend=None,
                     timeout_s=float(timeout_s), dp_ranks=[0])
        return _MESH

    if not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    backend = dist.get_backend()
    tp_rank, dp_rank, pp_rank = rank % tp, (rank // tp) % dp, rank // (tp * dp)
    groups = _new_groups(dp, tp, pp, rank, world, timeout_s)
    _MESH = Mesh(dp=dp, tp=tp, pp=pp, rank=rank, world_size=world, device=device, backend=backend,
                 timeout_s=float(timeout_s), dp_rank=dp_rank, tp_rank=tp_rank, pp_rank=pp_rank,
                 dp_group=groups["dp"][0], tp_group=groups["tp"][0], pp_group=groups["pp"][0],
                 dp_ranks=groups["dp"][1])
    start_heartbeat()
    return _MESH


def _check_sizes(dp, tp: int, pp: int, world: int, timeout_s) -> int:
    """The data-parallel size ("auto": what tp and pp leave), after checking the sizes fit the world."""
    for name, v in (("tp", tp), ("pp", pp)):
        if not isinstance(v, int) or v < 1:
            raise MeshError(f"init_mesh: {name} must be a positive integer, got {v!r}")
    if dp is None or dp == "auto":
        if world % (tp * pp):
            raise MeshError(f"init_mesh: world size {world} is not divisible by tp * pp = {tp} * {pp}")
        dp = world // (tp * pp)
    if not isinstance(dp, int) or dp < 1:
        raise MeshError(f'init_mesh: dp must be a positive integer or "auto", got {dp!r}')
    if dp * tp * pp != world:
        raise MeshError(f"init_mesh: dp * tp * pp = {dp} * {tp} * {pp} = {dp * tp * pp}, but there are "
                        f"{world} processes (WORLD_SIZE); launch {dp * tp * pp} with torchrun, or set dp = \"auto\"")
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise MeshError(f"init_mesh: timeout_s must be a positive number, got {timeout_s!r}")
    return dp


def _new_groups(dp: int, tp: int, pp: int, rank: int, world: int, timeout_s) -> dict:
    """{"dp" | "tp" | "pp": (this rank's group, its ranks)} in Megatron rank order (tp fastest)."""
    # Every rank creates every group, in the same order (new_group is collective).
    groups = {}
    for kind, members in (("dp", [[(p * dp + d) * tp + t for d in range(dp)] for p in range(pp) for t in range(tp)]),
                          ("tp", [[(p * dp + d) * tp + t for t in range(tp)] for p in range(pp) for d in range(dp)]),
                          ("pp", [[(p * dp + d) * tp + t for p in range(pp)] for d in range(dp) for t in range(tp)])):
        for ranks in members:
            group = dist.group.WORLD if len(ranks) == world else dist.new_group(
                ranks, timeout=datetime.timedelta(seconds=timeout_s))
            if rank in ranks:
                groups[kind] = (group, ranks)
    return groups


def destroy_mesh() -> None:
    """Tear down the process groups (tests; the end of a run)."""
    global _MESH
    _MESH = None
    stop_heartbeat()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------- consistency checks

def weights_checksum(module: torch.nn.Module) -> str:
    """A checksum of every parameter and buffer's bits (exact: integer sums, same on every rank)."""
    sums = []
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        t = t.detach()
        if t.numel() == 0:
            continue
        bits = t.contiguous().view(-1)
        if bits.element_size() in (2, 4, 8) and t.is_floating_point():
            bits = bits.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[bits.element_size()])
        bits = bits.to(torch.int64)
        weights = torch.arange(bits.numel(), device=bits.device, dtype=torch.int64) % 65521 + 1
        sums.append(torch.stack([bits.sum(), (bits * weights).sum()]))
    flat = torch.cat(sums).cpu() if sums else torch.zeros(1, dtype=torch.int64)
    return hashlib.sha256(flat.numpy().tobytes()).hexdigest()


def _check_equal(what: str, value: str, group, rank: int, describe, hint: str = "") -> None:
    size = dist.get_world_size(group)
    values: list = [None] * size
    record_collective(f"all_gather_object ({what} check)")
    try:
        dist.all_gather_object(values, value, group=group)
    except Exception as e:  # noqa: BLE001
        raise collective_error(f"all_gather_object ({what} check)", e) from None
    ranks = dist.get_process_group_ranks(group) if group is not None else list(range(size))
    for r, v in zip(ranks, values):
        if v != values[0]:
            raise MeshError(f"rank {r} has different {what} than rank {ranks[0]} "
                            f"({describe(v)} != {describe(values[0])}); every rank must run the same "
                            f"{what}" + (f": {hint}" if hint else ""))


# ---------------------------------------------------------------- failures that name the rank

_HB_PREFIX = "fastlm/heartbeat/"
_hb_state = {"seq": 0, "name": "start", "thread": None, "stop": None, "store": None}


def record_collective(name: str) -> int:
    """Count a collective this rank issues (the heartbeat publishes the count and its name)."""
    _hb_state["seq"] += 1
    _hb_state["name"] = name
    return _hb_state["seq"]


def _default_store():
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:  # noqa: BLE001
        return None


def start_heartbeat(interval_s: float = 0.5) -> None:
    if _hb_state["thread"] is not None or not dist.is_initialized():
        return
    store = _default_store()
    if store is None:
        return
    rank, stop = dist.get_rank(), threading.Event()

    def beat():
        n = 0
        while not stop.is_set():
            n += 1
            try:
                store.set(f"{_HB_PREFIX}{rank}", f"{n} {_hb_state['seq']} {_hb_state['name']}")
            except Exception:  # noqa: BLE001  (the store is gone: nothing left to report to)
                return
            stop.wait(interval_s)

    _hb_state.update(store=store, stop=stop, thread=threading.Thread(target=beat, name="fastlm-heartbeat", daemon=True))
    _hb_state["thread"].start()


def stop_heartbeat() -> None:
    if _hb_state["stop"] is not None:
        _hb_state["stop"].set()
    _hb_state.update(thread=None, stop=None, store=None)


def _read_beats(store, ranks: list[int]) -> dict[int, tuple[int, int, str] | None]:
    out = {}
    for r in ranks:
        try:
            store.set_timeout(datetime.timedelta(seconds=2))
            n, seq, name = store.get(f"{_HB_PREFIX}{r}").decode().split(" ", 2)
            out[r] = (int(n), int(seq), name)
        except Exception:  # noqa: BLE001
            out[r] = None
    return out


def diagnose(ranks: list[int] | None = None, wait_s: float = 2.0) -> str:
    """Which of `ranks` is dead or behind this one, from the heartbeats (a few seconds)."""
    store = _hb_state["store"]
    if store is None or not dist.is_initialized():
        return "no heartbeat store to tell which rank failed"
    me = dist.get_rank()
    ranks = [r for r in (ranks if ranks is not None else range(dist.get_world_size())) if r != me]
    try:
        first = _read_beats(store, ranks)
        time.sleep(wait_s)
        second = _read_beats(store, ranks)
    except Exception as e:  # noqa: BLE001
        return f"the launcher's key-value store is unreachable ({_one_line(e)}): rank 0's launcher or node may be gone"
    my_seq = _hb_state["seq"]
    dead, behind = [], []
    for r in ranks:
        a, b = first[r], second[r]
        if a is None or b is None or b[0] == a[0]:
            dead.append(r)
        elif b[1] < my_seq:
            behind.append((r, b[1], b[2]))
    parts = [f"rank {r} is not responding (its process died or is frozen)" for r in dead]
    parts += [f"rank {r} did not reach it (it is at collective #{s}: {n})" for r, s, n in behind]
    return "; ".join(parts) if parts else "every other rank is alive and has reached this collective"


def collective_error(what: str, error: BaseException, ranks: list[int] | None = None) -> CollectiveError:
    timeout = _MESH.timeout_s if _MESH is not None else None
    rank = dist.get_rank() if dist.is_initialized() else 0
    return CollectiveError(
        f"rank {rank}: collective #{_hb_state['seq']} {what} failed"
        + (f" (timeout_s = {timeout:g})" if timeout else "")
        + f": {diagnose(ranks)} [{_one_line(error)}]")


def wait_work(work, what: str, ranks: list[int] | None = None) -> None:
    """work.wait(), turning a failure or timeout into a CollectiveError that names the rank."""
    try:
        work.wait()
    except Exception as e:  # noqa: BLE001
        raise collective_error(what, e, ranks) from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) < 300 else text[:300] + "..."
