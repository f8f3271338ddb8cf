"""A new run directory, and how to take it back when the run fails before its first result."""
from __future__ import annotations

import shutil
from pathlib import Path


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
