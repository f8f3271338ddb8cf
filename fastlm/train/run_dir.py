"""A run directory's lifecycle: choosing it, creating it, and taking it back when the run fails
before its first optimizer step (so a bad input leaves nothing behind).

    run_dir = choose_run_dir("tiny", out_dir, resume, mesh)      # every rank gets rank 0's choice
    with RunDirectory(run_dir, fresh=is_main and not resume) as rd:
        ...; rd.started()                                        # from here a failure keeps it
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from fastlm.train.errors import CheckpointError, FastlmError


def unique_run_dir(root: Path, name: str) -> Path:
    """root/name, or root/name-YYYYmmdd-HHMMSS[-N] when that exists already."""
    path = root / name
    if not path.exists():
        return path
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = root / f"{name}-{stamp}", 1
    while path.exists():
        n += 1
        path = root / f"{name}-{stamp}-{n}"
    return path


def choose_run_dir(name: str, out_dir, resume: bool, mesh=None) -> Path:
    """--out, or runs/<name> (resume), or a new runs/<name>[-time]. Checked on rank 0; under
    torch.distributed every rank takes rank 0's choice (or its error)."""
    if mesh is None:
        return _choose(name, out_dir, resume)
    import torch.distributed as dist

    choice: list = [None]
    if dist.get_rank() == 0:
        try:
            choice = [("ok", str(_choose(name, out_dir, resume)))]
        except FastlmError as e:
            choice = [("error", str(e))]
    dist.broadcast_object_list(choice, src=0)
    kind, value = choice[0]
    if kind == "error":
        raise FastlmError(value)
    return Path(value)


def _choose(name: str, out_dir, resume: bool) -> Path:
    if out_dir is not None:
        run_dir = Path(out_dir)
    elif resume:
        run_dir = Path("runs") / name
    else:
        run_dir = unique_run_dir(Path("runs"), name)
    if resume:
        if not run_dir.is_dir():
            raise CheckpointError(f"--resume: run directory {run_dir} does not exist")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise FastlmError(f"run directory {run_dir} already exists and is not empty "
                          f"(use --resume to continue it, or another --out)")
    return run_dir


class RunDirectory:
    """Creates run_dir on enter (when `create`); on a failure before started(), removes what the
    run made when it is `fresh` (a new run on the main rank)."""

    def __init__(self, run_dir: Path, fresh: bool, create: bool = True):
        self.path, self.fresh, self.create = Path(run_dir), fresh, create
        self.made = first_missing(self.path)  # the top directory that mkdir will create, if any

    def __enter__(self) -> "RunDirectory":
        if self.create:
            self.path.mkdir(parents=True, exist_ok=True)
        return self

    def started(self) -> None:
        self.fresh = False

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.fresh:
            undo_run_dir(self.path, self.made)


def first_missing(path: Path) -> Path | None:
    """The top directory that `path.mkdir(parents=True)` would create (None if path exists)."""
    missing = None
    for p in [path, *path.parents]:
        if p.exists():
            return missing
        missing = p
    return missing


def undo_run_dir(run_dir: Path, made: Path | None) -> None:
    """Remove what a failed new run wrote: the directories it made, or its files in an empty --out."""
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)
    elif run_dir.is_dir():
        for child in run_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()


@contextlib.contextmanager
def derived_run_dir(out: Path, source: str | os.PathLike, tokenizer_path: str | os.PathLike):
    """A run directory made from the finished run `source` (`fastlm prune`, `fastlm quantize`): its
    config.toml and the tokenizer are copied into a temporary directory, the block writes the rest
    there, and it then takes the place of `out` (absent or empty: the caller checks). An error
    leaves nothing behind."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shutil.copyfile(Path(source) / "config.toml", tmp / "config.toml")
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
        yield tmp
        if out.exists():
            out.rmdir()  # empty (checked by the caller)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
