"""Weight and state files, plaintext or encrypted (fastlm.privacy.encryption), for every writer and
reader of a run's weights and optimizer state (checkpoints, final weights, quantized runs, exports).

    save_model_file(model, path, enc, name, compress24=())   # safetensors (tied tensors once)
    load_model_file(model, path, device, enc, name)          # 2:4-compressed weights densified
    load_state_file(path, enc, name)                         # the same, as a {name: tensor} dict

    save_torch_file(obj, path, enc, name) / load_torch_file(path, map_location, enc, name)

enc: an Encryption, or None for plaintext; name: the file's name within the run directory (what an
encrypted file is bound to). Encrypted files are serialized in memory and encrypted before they are
written, so no plaintext weights reach the disk. A plaintext reader refuses an encrypted file.
compress24: names of 2:4-pruned weights stored compressed (layout: fastlm.prune.stored24); every
load_model_file reads them back dense, exactly.
"""
from __future__ import annotations

import io
import struct
from pathlib import Path

import safetensors.torch
import torch

from fastlm.privacy.encryption import Encryption, refuse_encrypted
from fastlm.prune.stored24 import compress_state, compressed_weights, densify_state, header_metadata


def save_model_file(model: torch.nn.Module, path: Path, enc: Encryption | None = None, name: str = "",
                    compress24=()) -> None:
    if enc is None and not compress24:
        safetensors.torch.save_model(model, str(path))
        return
    state = model.state_dict()
    # What safetensors.torch.save_model does before writing: one name of each group of tied tensors.
    for removed in safetensors.torch._remove_duplicate_names(state).values():
        for other in removed:
            del state[other]
    tensors, metadata = compress_state({k: v.contiguous() for k, v in state.items()}, compress24)
    save_tensors_file(tensors, path, enc, name, metadata if compress24 else None)


def save_tensors_file(tensors: dict, path: Path, enc: Encryption | None = None, name: str = "",
                      metadata: dict | None = None) -> None:
    if enc is None:
        safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    else:
        enc.write(path, safetensors.torch.save(tensors, metadata=metadata), name)


def load_model_file(model: torch.nn.Module, path: Path, device="cpu", enc: Encryption | None = None,
                    name: str = "") -> None:
    """Load path into model, strictly (a tied tensor may be saved under either of its names)."""
    if enc is None:
        refuse_encrypted(path)
        try:
            metadata = header_metadata(path)
        except (OSError, ValueError, UnicodeDecodeError, struct.error, AttributeError):
            metadata = {}  # not a safetensors file: safetensors says so below
        if not compressed_weights(metadata):
            safetensors.torch.load_model(model, str(path), strict=True, device=str(device))
            return
    state = {k: v.to(device) for k, v in load_state_file(path, enc, name).items()}
    # As safetensors.torch.load_model: a tied tensor saved under one of its names fills the others.
    tied = safetensors.torch._remove_duplicate_names(model.state_dict(), preferred_names=state.keys())
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = set(missing) - {n for group in tied.values() for n in group}
    if missing or unexpected:
        raise RuntimeError(f"Error(s) in loading state_dict for {type(model).__name__}: missing keys "
                           f"{sorted(missing)}, unexpected keys {sorted(unexpected)}")


def load_state_file(path: Path, enc: Encryption | None = None, name: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a weights file on the CPU, 2:4-compressed weights densified (fastlm.prune.stored24)."""
    if enc is None:
        refuse_encrypted(path)
        return densify_state(safetensors.torch.load_file(str(path)), header_metadata(path))
    data = enc.read(path, name)
    return densify_state(safetensors.torch.load(data), header_metadata(data))


def save_torch_file(obj, path: Path, enc: Encryption | None = None, name: str = "") -> None:
    if enc is None:
        torch.save(obj, path)
        return
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    enc.write(path, buffer.getbuffer(), name)


def load_torch_file(path: Path, map_location=None, enc: Encryption | None = None, name: str = ""):
    """torch.load(weights_only=True): tensors and plain containers only, never arbitrary pickles."""
    if enc is None:
        refuse_encrypted(path)
        return torch.load(path, map_location=map_location, weights_only=True)
    return torch.load(io.BytesIO(enc.read(path, name)), map_location=map_location, weights_only=True)
