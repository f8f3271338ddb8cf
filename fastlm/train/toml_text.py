"""TOML text: writing a config's sections, and showing one value as TOML would (in error messages)."""
from __future__ import annotations

import json
import math
from typing import Any


def show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else _toml_value(value)


def dumps_toml(sections: dict[str, dict[str, Any]]) -> str:
    """A TOML writer for sections of scalars, lists and inline tables (None values are left out)."""
    out = []
    for name, table in sections.items():
        out.append(f"[{name}]")
        out += [f"{key} = {_toml_value(value)}" for key, value in table.items() if value is not None]
        out.append("")
    return "\n".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest round-trip form: 0.0003, 1e-05 (both valid TOML)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table (e.g. federated.client_dp); None entries left out
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
