"""Run a function on N gloo processes (spawned), with a deadline: a test never hangs.

    results = run_world(fn, 2, arg, timeout=60)   # fn(rank, world, arg) on each rank -> list of returns

fn must be importable (module-level). Each rank calls init_mesh through the env:// variables set
here (as torchrun would). An exception on a rank fails the test with that rank's traceback.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank, world, port, out_dir, env, args):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
                       "FASTLM_REQUIRE_NATIVE": "1", **env})
    torch.set_num_threads(1)
    path = Path(out_dir) / f"rank{rank}.pt"
    try:
        result = {"ok": fn(rank, world, *args)}
    except BaseException as e:  # noqa: BLE001
        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    torch.save(result, path)
    try:
        from fastlm.parallel import destroy_mesh

        destroy_mesh()
    except Exception:  # noqa: BLE001
        pass
    os._exit(0)  # no atexit teardown that could wait on a dead peer


def run_world(fn, world: int, *args, timeout: float = 120, env: dict | None = None, allow_errors: bool = False):
    """Returns each rank's return value (or, with allow_errors, {"error": ...} / {"exitcode": ...})."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as out_dir:
        port = free_port()
        procs = [ctx.Process(target=_entry, args=(fn, r, world, port, out_dir, env or {}, args), daemon=True)
                 for r in range(world)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        results = []
        for r, p in enumerate(procs):
            path = Path(out_dir) / f"rank{r}.pt"
            if path.exists():
                res = torch.load(path, weights_only=False)
            else:
                res = {"exitcode": p.exitcode, "hung": r in hung}
            results.append(res)
    if allow_errors:
        return results
    if hung:
        raise AssertionError(f"ranks {hung} did not finish within {timeout} s")
    for r, res in enumerate(results):
        if "ok" not in res:
            raise AssertionError(f"rank {r} failed: {res.get('traceback') or res}")
    return [res["ok"] for res in results]
