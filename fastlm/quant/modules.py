"""Finding the linears a conversion applies to, and swapping modules in the tree.

`skip` entries are fnmatch patterns over qualified module names ("lm_head", "blocks.0.mlp.*",
"*.attn.qkv"); an exact name is a pattern that matches itself. A pattern that matches a module
also skips everything inside it ("blocks.0" skips the whole first block). A pattern that matches
no linear of the model is an error: a typo would otherwise silently convert the layer meant to stay.
"""
from __future__ import annotations

import fnmatch
from typing import Iterable

from torch import nn


def check_skip(skip) -> list[str]:
    if isinstance(skip, str):
        skip = [skip]
    skip = list(skip or [])
    for pattern in skip:
        if not isinstance(pattern, str) or not pattern:
            raise TypeError(f"skip must be a list of module names or fnmatch patterns, got {pattern!r}")
    return skip


def _skipped_by(name: str, skip: list[str]) -> list[str]:
    """The patterns that match `name` or one of the modules containing it."""
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return [p for p in skip if any(fnmatch.fnmatchcase(prefix, p) for prefix in prefixes)]


def select_linears(model: nn.Module, skip: Iterable[str] = (), kind: type = nn.Linear,
                   what: str = "quantize") -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every `kind` module in `model` not matched by `skip`, in tree order.

    Raises ValueError when nothing is left, or when a skip pattern matches no `kind` module.
    """
    skip = check_skip(skip)
    found, used = [], set()
    for name, module in model.named_modules():
        if not isinstance(module, kind) or not name:
            continue
        hits = _skipped_by(name, skip)
        used.update(hits)
        if not hits:
            found.append((name, module))
    unused = [p for p in skip if p not in used]
    if unused:
        raise ValueError(f"skip: {', '.join(repr(p) for p in unused)} match(es) no {kind.__name__} module of the "
                         f"model; its {kind.__name__} modules are: {_names(model, kind)}")
    if not found:
        if any(isinstance(m, kind) for m in model.modules()):
            raise ValueError(f"nothing to {what}: every {kind.__name__} module is skipped ({', '.join(skip)})")
        raise ValueError(f"nothing to {what}: the model ({type(model).__name__}) has no {kind.__name__} modules")
    return found


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _names(model: nn.Module, kind: type, limit: int = 8) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, kind) and n]
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") if names else "none"
