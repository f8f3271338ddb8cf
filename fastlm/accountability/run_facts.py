"""Facts a run directory records, read from its files for `fastlm card` (fastlm.accountability.card):
parameter counts from a safetensors header, the prepared corpus a run trained on, content hashes,
training time from the logged throughput, and tolerant readers of TOML, JSON and JSONL files."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import tomllib

from fastlm.prune.stored24 import META, VALUES, compressed_weights
from fastlm.train.errors import FastlmError


def parameter_count(path: Path) -> int | str:
    """The number of parameters in a safetensors file, from its header (tied tensors are stored once;
    2:4-compressed weights, fastlm.prune.stored24, count as the dense weights they hold)."""
    if not path.is_file():
        return "unknown (no model.safetensors)"
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size < 1 << 27:
                raise ValueError("not a safetensors header")
            header = json.loads(f.read(size))
        packed = compressed_weights(header.get("__metadata__")) or {}
        return sum(math.prod(t["shape"]) for name, t in header.items()
                   if name != "__metadata__" and not name.endswith((VALUES, META))) \
            + sum(n * k for n, k in packed.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "unknown (model.safetensors is encrypted or not a safetensors file)"


def corpus_key(run_dir: Path) -> str | None:
    """The prepared corpus's key the run's checkpoints were written with (the newest checkpoint's)."""
    for state in sorted(run_dir.glob("checkpoints/*/trainer_state.json"), reverse=True):
        key = (read_json(state) or {}).get("corpus_key")
        if isinstance(key, str):
            return key
    return None


def find_prepared_corpus(key: str | None, config: dict) -> Path | None:
    """The corpus directory in the cache with this key (the part before any "+canaries" suffix), or the
    one the config would prepare now (its key from the sources' current paths, sizes and times)."""
    from fastlm.data.prepare import default_cache_dir

    root = default_cache_dir() / "corpora"
    base = key.split("+")[0] if key else _current_key(config)
    if not base:
        return None
    for meta in root.glob(f"*-{base[:16]}/meta.json"):
        if (read_json(meta) or {}).get("key") == base:
            return meta.parent
    return None


def _current_key(config: dict) -> str | None:
    try:
        from fastlm.data.prepare import _cache_key  # the key prepare_corpus would use
        from fastlm.data.sources import resolve_source

        d = config.get("data", {})
        src = resolve_source(d.get("source", "builtin"), text_field=d.get("text_field", "text"),
                             builtin_modules=d.get("builtin_modules"))
        tok = Path(d["tokenizer"]).expanduser().resolve() if d.get("tokenizer") else None
        return _cache_key(src, d.get("vocab_size"), tok, d.get("val_fraction", 0.05))
    except (ValueError, OSError, TypeError, ImportError):
        return None


def source_hashes(config: dict) -> list[tuple[str, str]]:
    """(file, sha256) of every source file of [data] source that exists on this machine."""
    from fastlm.data.sources import resolve_source

    d = config.get("data", {})
    try:
        src = resolve_source(d.get("source", "builtin"), text_field=d.get("text_field", "text"),
                             builtin_modules=d.get("builtin_modules"))
    except (ValueError, OSError, TypeError):
        return [(str(d.get("source")), "not found on this machine")]
    return [(f"`{p}`", f"`{sha256_file(p)}`") for p in src.files if Path(p).is_file()]


def step_seconds(steps: list[dict], batch: int | None = None) -> float | None:
    """Training time from the logged throughput: each logged interval's units / its rate. The units are
    the logged cumulative tokens (language models), else examples: steps x batch (task runs)."""
    total, last_units, found = 0.0, 0.0, False
    for r in sorted(steps, key=lambda r: r["step"]):
        rate_key = next((k for k in r if k.endswith("_per_s")), None)
        rate = r.get(rate_key) if rate_key else None
        units = r.get("tokens")
        if units is None and isinstance(batch, int):
            units = r["step"] * batch
        if not isinstance(rate, (int, float)) or rate <= 0 or not isinstance(units, (int, float)):
            continue
        total += (units - last_units) / rate
        last_units, found = units, True
    return total if found else None


def wall_seconds(run_dir: Path, launches: list[dict]) -> float | None:
    start = launches[0].get("started_at") if launches else None
    weights = run_dir / "model.safetensors"
    if not isinstance(start, (int, float)) or not weights.is_file():
        return None
    return max(0.0, weights.stat().st_mtime - start)


def read_environment(run_dir: Path) -> list[dict]:
    from fastlm.accountability.provenance import read_launches

    return read_launches(run_dir)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_toml(path: Path) -> dict | None:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError:
        return None
    except tomllib.TOMLDecodeError as e:
        raise FastlmError(f"{path} is not valid TOML: {e}") from None


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn line from a killed run
        if isinstance(record, dict) and "step" in record:
            out.append(record)
    return out
