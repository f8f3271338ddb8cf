"""A pruned run directory's record: prune.json (how it was pruned) and prune_masks.safetensors.

    prune.json: {"format": "fastlm-pruning", "version": 1, "pattern": "2:4", "scope": "layer",
                 "sparsity": 0.5, "source": "runs/micro", "layers": {"blocks.0.attn.qkv": 0.5, ...}}
    prune_masks.safetensors: one uint8 tensor per pruned linear, named by the linear: its mask's bits
        (1 = kept) in row-major order, packed 8 to a byte (numpy.packbits, the first bit the highest);
        the header's metadata "fastlm.mask_bits" = JSON {name: [N, K]} gives the shapes. (Files written
        before packing hold one byte per weight and no such metadata; both are read.)

Both are written by `fastlm prune` and carried on by a run trained from it (model.init_from).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from fastlm.prune.keep import PRUNE_FILE
from fastlm.prune.magnitude import parse_pattern
from fastlm.prune.stored24 import header_metadata

MASKS_FILE = "prune_masks.safetensors"
FORMAT, VERSION = "fastlm-pruning", 1
PACKED = "fastlm.mask_bits"  # the masks file's metadata key when its masks are bit-packed


def pruning_record(masks: dict[str, torch.Tensor], pattern: str, scope: str, source: str = "") -> dict:
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return {"format": FORMAT, "version": VERSION, "pattern": pattern, "scope": scope,
            "sparsity": 1 - kept / total, "source": source,
            "layers": {name: 1 - int(m.sum()) / m.numel() for name, m in masks.items()}}


def write_pruning(directory: str | Path, masks: dict[str, torch.Tensor], record: dict) -> None:
    """prune_masks.safetensors and prune.json into `directory` (each via a temporary name)."""
    directory = Path(directory)
    tensors = {name: torch.from_numpy(np.packbits(m.detach().cpu().bool().numpy().reshape(-1)))
               for name, m in masks.items()}
    shapes = {name: list(m.shape) for name, m in masks.items()}
    tmp = directory / f".{MASKS_FILE}.tmp-{os.getpid()}"
    safetensors.torch.save_file(tensors, str(tmp), metadata={PACKED: json.dumps(shapes)})
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
        shapes = json.loads(header_metadata(masks_path).get(PACKED, "null"))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise ValueError(f"{masks_path}: not a readable safetensors file ({e})") from None
    if set(masks) != set(record.get("layers", {})) or (shapes is not None and set(shapes) != set(masks)):
        raise ValueError(f"{masks_path}: its masks do not match the layers listed in {PRUNE_FILE}")
    if shapes is None:  # one byte per weight
        return record, {name: m.bool() for name, m in masks.items()}
    return record, {name: unpack(masks[name], shapes[name], masks_path) for name in masks}


def unpack(bits: torch.Tensor, shape: list[int], path: Path) -> torch.Tensor:
    """The bool mask of `shape` from its packed bits."""
    count = int(np.prod(shape))
    if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != -(-count // 8):
        raise ValueError(f"{path}: a packed mask of shape {shape} needs {-(-count // 8)} bytes, found "
                         f"{bits.dtype} {tuple(bits.shape)}")
    return torch.from_numpy(np.unpackbits(bits.numpy(), count=count).astype(bool).reshape(shape))
