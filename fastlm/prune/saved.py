"""A pruned run directory's record: prune.json (how it was pruned) and prune_masks.safetensors.

    prune.json: {"format": "fastlm-pruning", "version": 1, "pattern": "2:4", "scope": "layer",
                 "sparsity": 0.5, "source": "runs/micro", "layers": {"blocks.0.attn.qkv": 0.5, ...}}
    prune_masks.safetensors: one uint8 tensor (1 = kept) per pruned linear, named by the linear.

Both are written by `fastlm prune` and carried on by a run trained from it (model.init_from).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import safetensors.torch
import torch

from fastlm.prune.keep import PRUNE_FILE
from fastlm.prune.magnitude import parse_pattern

MASKS_FILE = "prune_masks.safetensors"
FORMAT, VERSION = "fastlm-pruning", 1


def pruning_record(masks: dict[str, torch.Tensor], pattern: str, scope: str, source: str = "") -> dict:
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return {"format": FORMAT, "version": VERSION, "pattern": pattern, "scope": scope,
            "sparsity": 1 - kept / total, "source": source,
            "layers": {name: 1 - int(m.sum()) / m.numel() for name, m in masks.items()}}


def write_pruning(directory: str | Path, masks: dict[str, torch.Tensor], record: dict) -> None:
    """prune_masks.safetensors and prune.json into `directory` (each via a temporary name)."""
    directory = Path(directory)
    tensors = {name: m.to(device="cpu", dtype=torch.uint8).contiguous() for name, m in masks.items()}
    tmp = directory / f".{MASKS_FILE}.tmp-{os.getpid()}"
    safetensors.torch.save_file(tensors, str(tmp))
    os.replace(tmp, directory / MASKS_FILE)
    tmp = directory / f".{PRUNE_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, directory / PRUNE_FILE)


def read_pruning(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """(record, {name: bool mask}) of a pruned run directory, or None when it is not one."""
    directory = Path(directory)
    path = directory / PRUNE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("version") != VERSION:
        raise ValueError(f"{path}: not a fastlm pruning record (expected \"format\": \"{FORMAT}\", "
                         f"\"version\": {VERSION})")
    try:
        parse_pattern(record.get("pattern"))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    masks_path = directory / MASKS_FILE
    if not masks_path.is_file():
        raise ValueError(f"{directory}: {PRUNE_FILE} is there but {MASKS_FILE} is missing")
    try:
        masks = safetensors.torch.load_file(str(masks_path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise ValueError(f"{masks_path}: not a readable safetensors file ({e})") from None
    if set(masks) != set(record.get("layers", {})):
        raise ValueError(f"{masks_path}: its masks do not match the layers listed in {PRUNE_FILE}")
    return record, {name: m.bool() for name, m in masks.items()}
