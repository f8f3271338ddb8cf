"""A task config: a fastlm training config plus a [task] section (fields of the task's dataclass).

    [task]                      # e.g. classification
    train = "data/train.jsonl"  # or "demo:langid"
    [model]                     # the family's keys: GPT (decoder), or family = "bert" | "roberta" | "albert"
    [data]  vocab_size, tokenizer, seq_len (= the longest input)
    [train] steps, batch sizes, lr, precision, adversarial, ...

The [model], [data], [train], [parallel] and [checkpoint] sections mean what they mean to
`fastlm train`; [data] source is not used (the task names its files).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from fastlm.train.config import (Config, _build_section, apply_override, dumps_toml, parse_value,
                                 with_model_architecture)
from fastlm.train.errors import ConfigError


@dataclass
class TaskConfig:
    config: Config           # the training sections ([model]: a GPT or an encoder family)
    task: Any                # the task's section dataclass
    name: str

    def to_toml(self) -> str:
        """The resolved config, readable again by load_task_config."""
        return dumps_toml({"task": dataclasses.asdict(self.task), **self.config.to_dict()})

    def with_model_architecture(self, model_config) -> "TaskConfig":
        """A copy whose [model] records a built backbone's architecture (see with_model_architecture)."""
        return dataclasses.replace(self, config=with_model_architecture(self.config, model_config),
                                   task=copy.deepcopy(self.task))


def demo_config_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("fastlm.tasks.configs").iterdir() if p.name.endswith(".toml"))


def load_task_config(spec: str | Path, section_cls: type, overrides=()) -> TaskConfig:
    """Read a task TOML (a file, or the name of a shipped demo config) and apply --set overrides."""
    path = Path(spec)
    if path.is_file():
        text, name = path.read_text(encoding="utf-8"), path.stem
    elif str(spec) in demo_config_names():
        text, name = resources.files("fastlm.tasks.configs").joinpath(f"{spec}.toml").read_text(encoding="utf-8"), str(spec)
    else:
        raise ConfigError(f"task config {str(spec)!r} is neither a TOML file nor a shipped config "
                          f"({', '.join(demo_config_names())})")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{spec}: invalid TOML: {e}") from None
    return task_config_from_dict(raw, section_cls, overrides, name)


def task_config_from_dict(raw: dict, section_cls: type, overrides=(), name: str = "task") -> TaskConfig:
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if key.strip().startswith("task.") and sep:
            raw.setdefault("task", {})[key.strip()[5:]] = parse_value(value.strip())
        else:
            apply_override(raw, item)
    task_raw = raw.pop("task", {})
    if not isinstance(task_raw, dict):
        raise ConfigError("task: expected a [task] table")
    task = _build_section("task", section_cls, task_raw)
    if hasattr(task, "validate"):
        task.validate()
    return TaskConfig(Config.from_dict(raw, name=name), task, name)
