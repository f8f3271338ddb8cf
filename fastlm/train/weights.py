"""A run's final weights: RUN_DIR/model.safetensors, sealed like a checkpoint.

    save_weights(model, run_dir, compress24=())  # temporary name + rename, then weights.json
    load_weights(model, run_dir, device)         # verified (size, sha256) before it is read

weights.json records the file's size and sha256, so a truncated or corrupted model.safetensors
is an error wherever a run is read (eval, generate, export, quantize, init_from, a task's
evaluate) instead of being evaluated silently. Runs written before the seal existed have no
weights.json and are read as they are. With enc (an Encryption: [checkpoint] encrypt = true)
model.safetensors is encrypted, bound to the name "model.safetensors" and the directory's run id.
compress24: names of 2:4-pruned weights stored compressed (fastlm.prune.stored24; read back dense).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from fastlm.privacy.encryption import Encryption
from fastlm.train.checkpoint import describe_file
from fastlm.train.errors import CheckpointError, FastlmError
from fastlm.train.weight_files import load_model_file, save_model_file

WEIGHTS = "model.safetensors"
SEAL = "weights.json"


def save_weights(model: nn.Module, directory: str | Path, enc: Encryption | None = None, compress24=()) -> Path:
    """Write model's state (tied tensors once) to directory/model.safetensors and seal it."""
    directory = Path(directory)
    tmp = directory / f".{WEIGHTS}.tmp-{os.getpid()}"
    seal_tmp = directory / f".{SEAL}.tmp-{os.getpid()}"
    try:
        save_model_file(model, tmp, enc, WEIGHTS, compress24)
        seal_tmp.write_text(json.dumps({"files": {WEIGHTS: describe_file(tmp)}}, indent=1))
        os.replace(tmp, directory / WEIGHTS)
        os.replace(seal_tmp, directory / SEAL)
    except BaseException:
        tmp.unlink(missing_ok=True)
        seal_tmp.unlink(missing_ok=True)
        raise
    return directory / WEIGHTS


def verify_weights(directory: str | Path) -> Path:
    """The path of directory/model.safetensors after checking it against its seal (CheckpointError if not)."""
    directory = Path(directory)
    path = directory / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    seal = directory / SEAL
    if not seal.is_file():
        return path
    try:
        want = json.loads(seal.read_text())["files"][WEIGHTS]
        want_bytes, want_sha = int(want["bytes"]), str(want["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{seal} is damaged: {e}") from None
    have = describe_file(path)
    if have["bytes"] != want_bytes:
        raise CheckpointError(f"{path} is truncated: {have['bytes']} bytes, its seal ({SEAL}) says {want_bytes}")
    if have["sha256"] != want_sha:
        raise CheckpointError(f"{path} is corrupted: it does not match the sha256 in {SEAL}")
    return path


def load_weights(model: nn.Module, directory: str | Path, device="cpu",
                 what: str = "the model in its config.toml", enc: Encryption | None = None) -> None:
    """Verify directory/model.safetensors, then load it into model (strict); enc decrypts it."""
    path = verify_weights(directory)
    try:
        load_model_file(model, path, device, enc, WEIGHTS)
    except FastlmError:  # encrypted: a missing or wrong key, or a changed file
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for foreign files
        text = str(e).strip()
        raise CheckpointError(f"{path} does not fit {what}: "
                              f"{text.splitlines()[0] if text else type(e).__name__}") from None
