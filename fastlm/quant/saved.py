"""Saving and loading quantized models: which modules are Int8Linear, with which settings.

A quantized run directory holds, next to config.toml and model.safetensors (int8 weights and
fp32 scales), `quantization.json`:

    {"format": "fastlm-quantization", "version": 1,
     "modules": {"blocks.0.attn.qkv": {"scheme": "w8a8", "group_size": null, "smooth": false}, ...}}

Loading builds the model from config.toml, `restore_quantized` swaps the listed nn.Linear modules
for empty Int8Linear ones, then the state dict is loaded (strictly) into that.
"""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from fastlm.nn.int8_linear import SCHEMES, Int8Linear
from fastlm.quant.modules import set_submodule

QUANTIZATION_FILE = "quantization.json"
FORMAT, VERSION = "fastlm-quantization", 1


def quantization_record(model: nn.Module) -> dict | None:
    """The record of `model`'s Int8Linear modules (None when it has none)."""
    modules = {name: {"scheme": m.scheme, "group_size": m.group_size, "smooth": m.smooth_scale is not None}
               for name, m in model.named_modules() if isinstance(m, Int8Linear)}
    return {"format": FORMAT, "version": VERSION, "modules": modules} if modules else None


def restore_quantized(model: nn.Module, record: dict) -> nn.Module:
    """Swap the nn.Linear modules named in `record` for (empty) Int8Linear modules, in place."""
    for name, spec in _check_record(record).items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{QUANTIZATION_FILE}: module {name!r} is not in the model") from None
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"{QUANTIZATION_FILE}: module {name!r} is a {type(linear).__name__}, not a linear")
        set_submodule(model, name, Int8Linear(linear.in_features, linear.out_features, linear.bias is not None,
                                              spec["scheme"], spec.get("group_size"), bool(spec.get("smooth")),
                                              device=linear.weight.device))
    return model


def read_quantization(directory: str | Path) -> dict | None:
    """The record in directory/quantization.json, or None when the directory has none."""
    path = Path(directory) / QUANTIZATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    try:
        _check_record(record)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return record


def write_quantization(directory: str | Path, record: dict) -> None:
    (Path(directory) / QUANTIZATION_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def _check_record(record) -> dict:
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"not a fastlm quantization record (expected \"format\": \"{FORMAT}\")")
    if record.get("version") != VERSION:
        raise ValueError(f"quantization record version {record.get('version')!r} is not supported "
                         f"(expected {VERSION})")
    modules = record.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise ValueError("the quantization record lists no modules")
    for name, spec in modules.items():
        if not isinstance(spec, dict) or spec.get("scheme") not in SCHEMES:
            raise ValueError(f"module {name!r}: expected a scheme in {', '.join(SCHEMES)}, got {spec!r}")
        group_size = spec.get("group_size")
        if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)):
            raise ValueError(f"module {name!r}: group_size must be an integer or null, got {group_size!r}")
    return modules
