"""Run directories: naming new ones, loading finished ones, and [model] init_from.

A run directory holds config.toml (the resolved config), tokenizer.json, model.safetensors,
metrics.jsonl and checkpoints/.
"""
from __future__ import annotations

import time
from pathlib import Path

import safetensors.torch

from fastlm.models import GPT
from fastlm.train.config import Config, load_config
from fastlm.train.errors import CheckpointError, ConfigError


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


def load_run(run_dir: str | Path, device="cpu") -> tuple[Config, GPT, Path]:
    """(config, model with the final weights, tokenizer.json path) of a finished run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    for name in ("config.toml", "model.safetensors", "tokenizer.json"):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"{run_dir} is not a finished fastlm run: {name} is missing")
    config, model = _run_model(run_dir, device)
    return config, model, run_dir / "tokenizer.json"


def init_model_from(directory: str | Path) -> tuple[GPT, Path | None]:
    """[model] init_from: (model, its tokenizer.json or None) from a fastlm run or an HF checkpoint."""
    from fastlm.models import is_hf_checkpoint, load_hf_checkpoint

    path = Path(directory)
    if not path.is_dir():
        raise ConfigError(f"model.init_from = {str(directory)!r}: expected an existing directory")
    tokenizer = path / "tokenizer.json"
    tokenizer = tokenizer if tokenizer.is_file() else None
    if (path / "config.toml").is_file() and (path / "model.safetensors").is_file():
        return _run_model(path)[1], tokenizer
    if is_hf_checkpoint(path):
        try:
            return load_hf_checkpoint(path), tokenizer
        except (ValueError, KeyError, OSError, RuntimeError) as e:
            raise CheckpointError(f"model.init_from = {str(directory)!r}: cannot load the Hugging Face "
                                  f"checkpoint: {_first_line(e)}") from None
    raise ConfigError(f"model.init_from = {str(directory)!r}: expected a fastlm run directory "
                      f"(config.toml + model.safetensors) or a Hugging Face checkpoint (config.json + safetensors)")


def _run_model(run_dir: Path, device="cpu") -> tuple[Config, GPT]:
    config = load_config(run_dir / "config.toml")
    model = GPT(config.model.gpt_config())
    _load_weights(model, run_dir / "model.safetensors", device)
    return config, model


def _load_weights(model: GPT, path: Path, device) -> None:
    try:
        safetensors.torch.load_model(model, str(path), strict=True, device=str(device))
    except Exception as e:  # safetensors raises several types for truncated or foreign files
        raise CheckpointError(f"{path} does not fit the model in its config.toml: {_first_line(e)}") from None
    model.to(device)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
