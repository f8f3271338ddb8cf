"""2:4 weights stored compressed in model.safetensors (what `fastlm prune --pattern 2:4` writes).

Layout. Each compressed linear weight NAME (e.g. "blocks.0.mlp.fc.weight", dense fp32 (N, K)) is not
stored under NAME but as two tensors in the format of fastlm/ops/reference_sparse24.py:
    NAME + ".sparse24_values"   float32 (N, 2 G), G = ceil(K / 4): the two kept weights of each group
                                of 4 consecutive input columns, in column order
    NAME + ".sparse24_meta"     uint8 (N, ceil(G / 2)): per group the nibble i0 | i1 << 2 (2-bit offsets
                                in the group), group 2j in the low nibble of byte j, 2j + 1 in the high
and the file's safetensors metadata (its header's "__metadata__", strings only) holds
    "fastlm.sparse24": '{"version": 1, "weights": {"NAME": [N, K], ...}}'
so ~0.53x the bytes of the dense fp32 weight (values 0.5x + offsets 1/32x). Every other tensor is stored
as usual, and prune.json says "storage": "sparse24" as well.

Readers: fastlm's weight loading (fastlm.train.weight_files) densifies such a file transparently, so
every reader of a run (eval, generate, export, quantize, model.init_from) sees the dense, pruned weights;
eval and generate then run the 2:4 linears compressed again (Sparse24Linear), training keeps them zero
with the pruning masks. A file without the marker is read as it is.
"""
from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path

import torch

from fastlm.ops.reference_sparse24 import compress24, decompress24

MARKER, VERSION = "fastlm.sparse24", 1
VALUES, META = ".sparse24_values", ".sparse24_meta"
STORAGE = "sparse24"  # prune.json's "storage" when model.safetensors holds compressed weights


def compress_state(state: dict[str, torch.Tensor], names: Iterable[str]) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, safetensors metadata) of `state` with each weight in `names` stored compressed."""
    tensors, shapes = dict(state), {}
    for name in names:
        weight = tensors.pop(name)
        if weight.dtype != torch.float32:
            raise ValueError(f"{name}: 2:4 storage holds fp32 weights, got {weight.dtype}")
        values, meta = compress24(weight)  # ValueError when it is not 2:4
        tensors[name + VALUES], tensors[name + META] = values.cpu(), meta.cpu()
        shapes[name] = list(weight.shape)
    metadata = {"format": "pt"}
    if shapes:
        metadata[MARKER] = json.dumps({"version": VERSION, "weights": shapes})
    return tensors, metadata


def compressed_weights(metadata: dict | None) -> dict[str, tuple[int, int]] | None:
    """{weight name: (N, K)} from a file's metadata, None when it holds no compressed weights."""
    text = (metadata or {}).get(MARKER)
    if text is None:
        return None
    try:
        record = json.loads(text)
        if record["version"] != VERSION:
            raise ValueError(f"version {record['version']} (this fastlm reads {VERSION})")
        return {name: (int(n), int(k)) for name, (n, k) in record["weights"].items()}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"its {MARKER!r} metadata is not a fastlm 2:4 record ({e})") from None


def densify_state(tensors: dict[str, torch.Tensor], metadata: dict | None) -> dict[str, torch.Tensor]:
    """The dense state dict of a file's tensors (each compressed weight decompressed, exactly)."""
    shapes = compressed_weights(metadata)
    if shapes is None:
        return tensors
    state = dict(tensors)
    for name, (n, k) in shapes.items():
        try:
            values, meta = state.pop(name + VALUES), state.pop(name + META)
        except KeyError:
            raise ValueError(f"its metadata lists the 2:4 weight {name!r} but not its {VALUES} / {META} "
                             f"tensors") from None
        groups = -(-k // 4)
        if tuple(values.shape) != (n, 2 * groups) or tuple(meta.shape) != (n, -(-groups // 2)) \
                or meta.dtype != torch.uint8:
            raise ValueError(f"the 2:4 weight {name!r} ({n}, {k}) has values {tuple(values.shape)} and "
                             f"offsets {meta.dtype} {tuple(meta.shape)}: not its compressed layout")
        state[name] = decompress24(values, meta, k)
    return state


def header_metadata(source: str | Path | bytes | memoryview) -> dict:
    """The "__metadata__" of a safetensors file (a path) or of its bytes, read from the header only."""
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            header = f.read(size)
    else:
        size = struct.unpack("<Q", bytes(source[:8]))[0]
        header = bytes(source[8:8 + size])
    return json.loads(header).get("__metadata__") or {}
