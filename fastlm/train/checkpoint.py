"""Checkpoints: RUN_DIR/checkpoints/step_0000100/, written to a temporary name, then renamed.

    model.safetensors    the weights (safetensors.torch.save_model handles tied tensors)
    optimizer.pt         the AdamW state
    state.pt             step, loss scaler, RNG states, data loader position
    trainer_state.json   step, the model config and data key it belongs to, each file's size
                         and sha256 (so a truncated or corrupted checkpoint is caught on resume)

With [checkpoint] encrypt = true the three weight and state files are encrypted (see
fastlm.privacy.encryption), each bound to its name, e.g. "checkpoints/step_0000100/optimizer.pt".

The .pt files hold only tensors and plain containers, loaded with torch.load(weights_only=True).
The learning rate is a pure function of the step, so the scheduler's state is the step.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from fastlm.privacy.encryption import Encryption
from fastlm.train.errors import CheckpointError
from fastlm.train.weight_files import load_model_file, load_torch_file, save_model_file, save_torch_file

FORMAT_VERSION = 1
STEP_DIR = re.compile(r"^step_(\d{7,})$")
FILES = ("model.safetensors", "optimizer.pt", "state.pt")


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (temporary directories are not listed)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scaler, loader,
                    identity: dict, keep: int, enc: Encryption | None = None) -> Path:
    """Write checkpoint `step`, then delete all but the newest `keep`. Returns its directory.
    enc: encrypt the files (None: plaintext)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    within = f"checkpoints/{final.name}/"  # the files' names within the run directory (what enc binds them to)
    try:
        save_model_file(model, tmp / "model.safetensors", enc, within + "model.safetensors")
        save_torch_file(optimizer.state_dict(), tmp / "optimizer.pt", enc, within + "optimizer.pt")
        save_torch_file({
            "step": step,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": _rng_state(),
            "loader": loader.state_dict(),
        }, tmp / "state.pt", enc, within + "state.pt")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seal_checkpoint(tmp, final, {"format": FORMAT_VERSION, "step": step, **identity}, FILES, run_dir, keep)
    return final


def seal_checkpoint(tmp: Path, final: Path, info: dict, files, run_dir: Path, keep: int) -> None:
    """Record `files` (size, sha256) in tmp/trainer_state.json, rename tmp to final, keep the newest
    `keep` checkpoints. A failure removes tmp and leaves the earlier checkpoints as they were."""
    try:
        info = {**info, "files": {name: describe_file(tmp / name) for name in files}}
        (tmp / "trainer_state.json").write_text(json.dumps(info, indent=1))
        if final.exists():  # re-saving a step after a resume: replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def verify_checkpoint(path: Path, identity: dict, format=FORMAT_VERSION, required=FILES) -> dict:
    """Check files and identity; return trainer_state.json. CheckpointError in one line if bad.

    `required`: the files that must be there; None means every file trainer_state.json lists
    (a sharded checkpoint's file names depend on the layout it was saved at)."""
    hint = "(delete it to resume from an earlier checkpoint)"
    try:
        info = json.loads((path / "trainer_state.json").read_text())
        files, step = info["files"], int(info["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} is damaged: unreadable trainer_state.json ({e}) {hint}") from None
    if info.get("format") != format:
        raise CheckpointError(f"checkpoint {path} has format {info.get('format')!r}, expected {format}")
    for name in files if required is None else required:
        want = files.get(name)
        file = path / name
        if want is None or not file.is_file():
            raise CheckpointError(f"checkpoint {path} is damaged: {name} is missing {hint}")
        size = file.stat().st_size
        if size != want["bytes"]:
            raise CheckpointError(f"checkpoint {path} is truncated: {name} has {size} bytes, "
                                  f"expected {want['bytes']} {hint}")
        if _sha256(file) != want["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupted: {name} does not match its sha256 {hint}")
    for key, value in identity.items():
        if info.get(key) != value:
            raise CheckpointError(f"checkpoint {path} does not match this run: {_difference(key, info.get(key), value)}")
    info["step"] = step
    return info


def load_checkpoint(path: Path, model, optimizer, scaler, loader, identity: dict,
                    device: torch.device, enc: Encryption | None = None) -> int:
    """Restore everything saved by save_checkpoint; returns the step to continue from."""
    verify_checkpoint(path, identity)
    within = f"checkpoints/{path.name}/"
    try:
        load_model_file(model, path / "model.safetensors", device, enc, within + "model.safetensors")
        optimizer.load_state_dict(load_torch_file(path / "optimizer.pt", device, enc, within + "optimizer.pt"))
        state = load_torch_file(path / "state.pt", "cpu", enc, within + "state.pt")
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} does not fit this run: {first_line}") from None
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    loader.load_state_dict(state["loader"])
    _set_rng_state(state["rng"])
    return int(state["step"])


# ---------------------------------------------------------------- helpers

def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def describe_file(path: Path) -> dict:
    """{"bytes": size, "sha256": hex digest}: what a seal records of a file."""
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _difference(key: str, there: Any, here: Any) -> str:
    if isinstance(there, dict) and isinstance(here, dict):
        for k in sorted(set(there) | set(here), key=str):
            if there.get(k) != here.get(k):
                return f"{key}.{k} is {there.get(k)!r} there, {here.get(k)!r} here"
    return f"{key} is {there!r} there, {here!r} here"
