"""Training configuration: one dataclass per TOML section, presets, `--set` overrides.

    config = load_config("tiny", ["train.steps=50", "train.precision=fp32"])

A config error is a `ConfigError` whose message is one line naming the key, the value and what
was expected, so the CLI can print it as is.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from fastlm.train.errors import ConfigError
from fastlm.train.model_section import DEFAULT_FAMILY, MODEL_SECTIONS, GPTSection, ModelSection

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LINEARS = ("default", "int8_train")


@dataclass
class DataSection:
    source: str = "builtin"              # "builtin" (the embedded corpus) or a file/dir/glob
    text_field: str = "text"             # the text field of JSONL records
    vocab_size: int = 4096               # BPE vocabulary trained on the training split
    tokenizer: str | None = None         # an existing tokenizer.json to use instead
    val_fraction: float = 0.05           # share of documents held out for validation
    seq_len: int = 1024                  # tokens per training sequence
    builtin_modules: list[str] | None = None  # subset of the embedded corpus (None: default set)
    pack: bool = False                   # attend within documents only (split at eos; cu_seqlens)
    # Masked-LM pretraining (model.family = bert | roberta | albert); see fastlm/data/masking.py.
    masking: str = "dynamic"             # dynamic (fresh mask each time, RoBERTa) | static (fixed per example, BERT)
    mask_prob: float = 0.15              # share of tokens selected for prediction (80% [MASK], 10% random, 10% kept)
    whole_word_mask: bool = False        # select whole words (all of their tokens) instead of tokens
    sentence_order: bool = False         # ALBERT's sentence-order prediction ([CLS] A [SEP] B [SEP], maybe swapped)


@dataclass
class TrainSection:
    steps: int = 1000
    global_batch_size: int = 32          # sequences per optimizer step, over all processes
    micro_batch_size: int = 8            # sequences per forward/backward on one process
    lr: float = 3e-4
    warmup_steps: int = 100
    min_lr: float = 3e-5                 # the cosine decay ends here at the last step
    weight_decay: float = 0.1
    grad_clip: float = 1.0               # global-norm clip; 0 disables clipping
    precision: str = "auto"              # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    seed: int = 0
    log_every: int = 10
    eval_every: int = 500                # also always at step 0 and at the end; 0: only those
    eval_batches: int = 20               # validation batches of micro_batch_size sequences
    activation_checkpointing: bool = False
    tensorboard: bool = False            # also log to RUN_DIR/tensorboard (if installed)
    # Adversarial training (fastlm.tasks.adversarial): perturb the input embeddings along the loss
    # gradient and train on the perturbed loss too. "fgm" (one step) | "pgd" (projected steps) | "none".
    adversarial: str = "none"
    adversarial_epsilon: float = 1.0     # L2 norm of each token's embedding perturbation (at most)
    adversarial_steps: int = 3           # pgd ascent steps
    adversarial_alpha: float = 0.0       # pgd step size; 0: 2.5 * epsilon / steps


@dataclass
class ParallelSection:
    dp: int | str = "auto"               # data-parallel degree, or "auto" (= the processes left)
    tp: int = 1                          # tensor parallel: Megatron-style splits of every layer
    sequence_parallel: bool = False      # with tp > 1: norms and dropout on 1/tp of each sequence
    pp: int = 1
    bucket_mb: float = 25.0              # gradient all-reduce bucket size
    grad_reduce_dtype: str = "fp32"      # fp32 (as the gradients) | bf16 | fp16: communicate in 16 bits
    shard_optimizer: bool = False        # ZeRO-1: each rank keeps and steps 1/dp of the optimizer state
    dp_shares: list[int] | None = None   # e.g. [3, 1]: each rank's share of every global batch
    sync: str = "every_step"             # every_step | local_sgd (average parameters every sync_every steps)
    sync_every: int = 1
    timeout_s: float = 300.0             # a collective that takes longer fails, naming the missing rank
    # Pipeline parallel (pp > 1): see fastlm.parallel.pipeline
    schedule: str = "1f1b"               # gpipe | 1f1b | interleaved
    virtual_stages: int = 1              # model chunks per pipeline rank (interleaved only)
    stage_layers: list[int] | None = None  # blocks per stage (pp x virtual_stages entries); default: balanced
    stage_balance: str = "params"        # params | time: what balances the stages without stage_layers


@dataclass
class CheckpointSection:
    every: int = 1000                    # steps between checkpoints (and at the end); 0: none
    keep: int = 3                        # newest checkpoints kept


@dataclass
class Config:
    model: ModelSection = field(default_factory=GPTSection)  # the family's section (model_section.py)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    name: str = "run"                    # not a TOML key: names the run directory

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    def dp_size(self, world_size: int | None = None) -> int:
        """The data-parallel degree, resolving "auto" from the number of processes."""
        if self.parallel.dp != "auto":
            return int(self.parallel.dp)
        world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
        return max(1, world // (self.parallel.tp * self.parallel.pp))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], name: str = "run") -> "Config":
        for section in raw:
            if section not in SECTIONS:
                raise ConfigError(f"unknown section [{section}] (expected one of: {', '.join(SECTIONS)})")
            if not isinstance(raw[section], dict):
                raise ConfigError(f"{section} = {_show(raw[section])}: expected a [{section}] table")
        sections = {s: _build_section(s, SECTIONS[s], raw.get(s, {})) for s in SECTIONS if s != "model"}
        config = cls(model=_build_model_section(raw.get("model", {}), sections["data"]), name=name, **sections)
        validate(config)
        return config


def model_section_class(family: Any) -> type[ModelSection]:
    """The [model] section class registered for a family (fastlm.train.model_section)."""
    if isinstance(family, str) and family in MODEL_SECTIONS:
        return MODEL_SECTIONS[family]
    raise ConfigError(f"model.family = {_show(family)}: expected one of {', '.join(MODEL_SECTIONS)}")


def _build_model_section(raw: dict[str, Any], data: DataSection) -> ModelSection:
    """[model] as its family's section: `family` first, then only that family's keys."""
    family = raw.get("family", DEFAULT_FAMILY)
    section = model_section_class(family)
    raw = {**section.defaults_from_data(data), **raw, "family": family}
    return _build_section("model", section, raw, f" for model.family = {_show(family)}")


def with_model_architecture(config: Config, model_config) -> Config:
    """A copy of config whose [model] records a built model's architecture (model.config, e.g. what
    model.init_from brought); the run keys stay. The config passed in is left as it was."""
    section = model_section_class(model_config.family)
    architecture = {f.name: getattr(model_config, f.name) for f in fields(section.ARCHITECTURE)}
    run_keys = {f.name: getattr(config.model, f.name) for f in fields(ModelSection)}
    return dataclasses.replace(copy.deepcopy(config), model=section(**architecture, **run_keys))


SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "train": TrainSection,
    "parallel": ParallelSection,
    "checkpoint": CheckpointSection,
}


# ---------------------------------------------------------------- loading

def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("fastlm.configs").iterdir() if p.name.endswith(".toml"))


def load_config(path_or_preset: str | os.PathLike, overrides: typing.Iterable[str] = ()) -> Config:
    """Read a TOML file or a preset name, apply `section.key=value` overrides, validate."""
    text, name = _read_source(str(path_or_preset))
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path_or_preset}: invalid TOML: {e}") from None
    for item in overrides:
        apply_override(raw, item)
    return Config.from_dict(raw, name=name)


def _read_source(spec: str) -> tuple[str, str]:
    path = Path(spec)
    if path.is_file():
        return path.read_text(encoding="utf-8"), path.stem
    presets = preset_names()
    if spec in presets:
        return resources.files("fastlm.configs").joinpath(f"{spec}.toml").read_text(encoding="utf-8"), spec
    if path.exists():
        raise ConfigError(f"config {spec!r} is not a file")
    raise ConfigError(f"config {spec!r} is neither a TOML file nor a preset (presets: {', '.join(presets)})")


def parse_value(text: str) -> Any:
    """A `--set` value: any TOML value (1, 3e-4, true, "x", [1, 2]); otherwise the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not section or not name or "." in name:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.steps=100")
    if section not in SECTIONS:
        raise ConfigError(f"--set {item!r}: unknown section [{section}] (expected one of: {', '.join(SECTIONS)})")
    table = raw.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"--set {item!r}: {section} is not a table in the config file")
    table[name] = parse_value(value.strip())


def _build_section(section: str, cls: type, raw: dict[str, Any], owner: str = ""):
    """cls(**raw), type-checked; owner says whose keys they are in errors (e.g. a model family)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(f"unknown key {section}.{key}{owner} (expected one of: {', '.join(names)})")
        kwargs[key] = _check_type(f"{section}.{key}", value, hints[key])
    return cls(**kwargs)


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Return value (ints widened to float where a float is expected) or raise ConfigError."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    for opt in options:
        if opt is type(None):
            continue  # TOML has no null: an optional key is set by omitting it
        if opt is bool and isinstance(value, bool):
            return value
        if opt is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if opt is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if opt is str and isinstance(value, str):
            if key == "parallel.dp" and value != "auto":
                continue
            return value
        if typing.get_origin(opt) is list and isinstance(value, list):
            (item,) = typing.get_args(opt)
            if all(isinstance(v, item) for v in value):
                return value
    raise ConfigError(f"{key} = {_show(value)}: expected {_describe(hint, key)}")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _describe(hint: Any, key: str) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    words = []
    for opt in options:
        if opt is type(None):
            continue
        if opt is str and key == "parallel.dp":
            words.append('"auto"')
        elif typing.get_origin(opt) is list:
            words.append(f"a list of {names[typing.get_args(opt)[0]][2:]}s")
        else:
            words.append(names.get(opt, str(opt)))
    return " or ".join(words)


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else _toml_value(value)


# ---------------------------------------------------------------- validation

def validate(config: Config) -> None:
    t, d, p, c = config.train, config.data, config.parallel, config.checkpoint
    if t.precision not in PRECISIONS:
        raise ConfigError(f"train.precision = {_show(t.precision)}: expected one of {', '.join(PRECISIONS)}")
    if config.model.linear not in LINEARS:
        raise ConfigError(f"model.linear = {_show(config.model.linear)}: expected one of {', '.join(LINEARS)}")
    positive = {
        "train.steps": t.steps, "train.global_batch_size": t.global_batch_size,
        "train.micro_batch_size": t.micro_batch_size, "train.log_every": t.log_every,
        "train.eval_batches": t.eval_batches, "data.vocab_size": d.vocab_size, "data.seq_len": d.seq_len,
        "parallel.tp": p.tp, "parallel.pp": p.pp, "checkpoint.keep": c.keep,
    }
    if p.dp != "auto":
        positive["parallel.dp"] = p.dp
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} = {_show(value)}: expected a positive integer")
    non_negative = {
        "train.warmup_steps": t.warmup_steps, "train.eval_every": t.eval_every, "checkpoint.every": c.every,
        "train.min_lr": t.min_lr, "train.weight_decay": t.weight_decay, "train.grad_clip": t.grad_clip,
    }
    for key, value in non_negative.items():
        if value < 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"{key} = {_show(value)}: expected a value >= 0")
    if not (t.lr > 0 and math.isfinite(t.lr)):
        raise ConfigError(f"train.lr = {_show(t.lr)}: expected a positive number")
    if t.min_lr > t.lr:
        raise ConfigError(f"train.min_lr = {_show(t.min_lr)}: expected at most train.lr = {_show(t.lr)}")
    if not 0 < d.val_fraction < 1:
        raise ConfigError(f"data.val_fraction = {_show(d.val_fraction)}: expected a number between 0 and 1")
    _validate_tensor_parallel(config)
    _validate_pipeline(config)
    _validate_parallel(p, t)
    _validate_adversarial(t)
    # Outside a launch (no WORLD_SIZE: loading a finished run for eval/generate, or a config in a
    # notebook) dp = "auto" has no process count yet: dp_shares say how many ranks there will be.
    # Trainer.fit checks the split again against the real data-parallel size.
    unlaunched_shares = p.dp == "auto" and p.dp_shares is not None and "WORLD_SIZE" not in os.environ
    check_batch_split(config, len(p.dp_shares) if unlaunched_shares else config.dp_size())
    # A family without a context or vocabulary field (a vision model) skips these checks.
    max_seq_len, vocab_size = getattr(config.model, "max_seq_len", None), getattr(config.model, "vocab_size", None)
    if max_seq_len is not None and d.seq_len > max_seq_len:
        raise ConfigError(f"data.seq_len = {d.seq_len}: expected at most model.max_seq_len = {max_seq_len}")
    if vocab_size is not None and d.vocab_size > vocab_size:
        raise ConfigError(f"data.vocab_size = {d.vocab_size}: expected at most model.vocab_size = {vocab_size}")
    try:
        config.model.architecture().validate()
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    _validate_masked_lm(config)


def _validate_masked_lm(config: Config) -> None:
    d, m = config.data, config.model
    if d.masking not in ("static", "dynamic"):
        raise ConfigError(f"data.masking = {_show(d.masking)}: expected \"static\" or \"dynamic\"")
    if not 0 < d.mask_prob < 1:
        raise ConfigError(f"data.mask_prob = {_show(d.mask_prob)}: expected a number between 0 and 1")
    if not m.is_encoder:
        encoders = " | ".join(family for family, section in MODEL_SECTIONS.items() if section.is_encoder)
        for key, on in (("whole_word_mask", d.whole_word_mask), ("sentence_order", d.sentence_order)):
            if on:
                raise ConfigError(f"data.{key} = true: only for masked-LM models (model.family = "
                                  f"{encoders}), not {_show(m.family)}")
        return
    if d.pack:
        raise ConfigError(f"data.pack = true: only for GPT families, not model.family = {_show(m.family)}")
    if d.sentence_order and d.seq_len < 5:
        raise ConfigError(f"data.seq_len = {d.seq_len}: sentence-order prediction needs at least 5")
    if d.vocab_size + 3 > m.vocab_size:
        raise ConfigError(f"model.vocab_size = {m.vocab_size}: expected at least data.vocab_size + 3 = "
                          f"{d.vocab_size + 3} (room for [MASK], [CLS], [SEP])")


ADVERSARIAL = ("none", "fgm", "pgd")


def _validate_adversarial(t: TrainSection) -> None:
    if t.adversarial not in ADVERSARIAL:
        raise ConfigError(f"train.adversarial = {_show(t.adversarial)}: expected one of {', '.join(ADVERSARIAL)}")
    if not (t.adversarial_epsilon > 0 and math.isfinite(t.adversarial_epsilon)):
        raise ConfigError(f"train.adversarial_epsilon = {_show(t.adversarial_epsilon)}: expected a positive number")
    if t.adversarial_steps < 1:
        raise ConfigError(f"train.adversarial_steps = {_show(t.adversarial_steps)}: expected a positive integer")
    if not (t.adversarial_alpha >= 0 and math.isfinite(t.adversarial_alpha)):
        raise ConfigError(f"train.adversarial_alpha = {_show(t.adversarial_alpha)}: expected a number >= 0 "
                          f"(0: 2.5 * epsilon / steps)")


def _validate_tensor_parallel(config: Config) -> None:
    p = config.parallel
    if not isinstance(p.sequence_parallel, bool):
        raise ConfigError(f"parallel.sequence_parallel = {_show(p.sequence_parallel)}: expected true or false")
    if p.tp == 1:
        return
    for bad, why in ((config.model.is_encoder and p.sequence_parallel,
                      f"parallel.sequence_parallel = true and model.family = {_show(config.model.family)} (an "
                      f"encoder runs a padded batch as one packed sequence of its real tokens, whose length need "
                      f"not divide tp)"),
                     (config.model.linear != "default", f"model.linear = {_show(config.model.linear)}"),
                     (p.sync == "local_sgd", 'parallel.sync = "local_sgd"'),
                     (config.train.precision == "fp16", 'train.precision = "fp16" (use "bf16")'),
                     (config.train.activation_checkpointing and config.model.dropout > 0,
                      "train.activation_checkpointing and model.dropout > 0 (the recomputation would draw "
                      "other dropout masks)")):
        if bad:
            raise ConfigError(f"parallel.tp = {p.tp}: not available with {why}")
    if config.model.init_from:
        return  # the architecture comes from init_from: checked when the model is built
    from fastlm.parallel.tensor.layout import check_tp_layout

    try:
        check_tp_layout(config.model.architecture(), p.tp, p.sequence_parallel, config.data.seq_len)
    except ValueError as e:
        raise ConfigError(str(e)) from None


GRAD_REDUCE_DTYPES = ("fp32", "bf16", "fp16")
SYNC_MODES = ("every_step", "local_sgd")


def _validate_parallel(p: ParallelSection, t: TrainSection) -> None:
    if not (p.bucket_mb > 0 and math.isfinite(p.bucket_mb)):
        raise ConfigError(f"parallel.bucket_mb = {_show(p.bucket_mb)}: expected a positive number")
    if not (p.timeout_s > 0 and math.isfinite(p.timeout_s)):
        raise ConfigError(f"parallel.timeout_s = {_show(p.timeout_s)}: expected a positive number of seconds")
    if p.grad_reduce_dtype not in GRAD_REDUCE_DTYPES:
        raise ConfigError(f"parallel.grad_reduce_dtype = {_show(p.grad_reduce_dtype)}: expected one of "
                          f"{', '.join(GRAD_REDUCE_DTYPES)}")
    if p.sync not in SYNC_MODES:
        raise ConfigError(f"parallel.sync = {_show(p.sync)}: expected one of {', '.join(SYNC_MODES)}")
    if p.sync_every < 1:
        raise ConfigError(f"parallel.sync_every = {_show(p.sync_every)}: expected a positive integer")
    if p.sync_every != 1 and p.sync != "local_sgd":
        raise ConfigError(f"parallel.sync_every = {p.sync_every}: only used with parallel.sync = \"local_sgd\"")
    if p.shard_optimizer and p.sync == "local_sgd":
        raise ConfigError('parallel.shard_optimizer = true: not available with parallel.sync = "local_sgd" '
                          '(each rank keeps its whole optimizer state)')
    if p.shard_optimizer and t.precision == "fp16":
        raise ConfigError('parallel.shard_optimizer = true: not available with train.precision = "fp16" '
                          '(use "bf16")')
    if p.dp_shares is not None:
        if not p.dp_shares or any(s < 1 for s in p.dp_shares):
            raise ConfigError(f"parallel.dp_shares = {_show(p.dp_shares)}: expected a list of positive integers, "
                              f"one per data-parallel rank")


PIPELINE_SCHEDULES = ("gpipe", "1f1b", "interleaved")
STAGE_BALANCES = ("params", "time")


def _validate_pipeline(config: Config) -> None:
    p, n_layer = config.parallel, getattr(config.model, "n_layer", None)
    if p.schedule not in PIPELINE_SCHEDULES:
        raise ConfigError(f"parallel.schedule = {_show(p.schedule)}: expected one of {', '.join(PIPELINE_SCHEDULES)}")
    if p.stage_balance not in STAGE_BALANCES:
        raise ConfigError(f"parallel.stage_balance = {_show(p.stage_balance)}: expected one of "
                          f"{', '.join(STAGE_BALANCES)}")
    if p.virtual_stages < 1:
        raise ConfigError(f"parallel.virtual_stages = {_show(p.virtual_stages)}: expected a positive integer")
    if p.virtual_stages > 1 and p.schedule != "interleaved":
        raise ConfigError(f"parallel.virtual_stages = {p.virtual_stages}: only used with parallel.schedule = "
                          f"\"interleaved\" (schedule is {_show(p.schedule)})")
    if p.pp == 1:
        return
    if config.model.is_encoder:
        raise ConfigError(f"parallel.pp = {p.pp}: pipeline parallelism splits GPT models only, not "
                          f"model.family = {_show(config.model.family)}")
    if config.train.precision == "fp16":
        raise ConfigError('parallel.pp > 1: not available with train.precision = "fp16" (use "bf16")')
    if p.shard_optimizer:
        raise ConfigError("parallel.shard_optimizer = true: not available with parallel.pp > 1 yet")
    if p.sync == "local_sgd":
        raise ConfigError('parallel.sync = "local_sgd": not available with parallel.pp > 1')
    stages = p.pp * p.virtual_stages
    if n_layer is not None and stages > n_layer:
        raise ConfigError(f"parallel.pp * parallel.virtual_stages = {p.pp} * {p.virtual_stages} = {stages} pipeline "
                          f"stages, more than model.n_layer = {n_layer}: every stage needs at least one layer")
    if p.stage_layers is not None:
        if len(p.stage_layers) != stages:
            raise ConfigError(f"parallel.stage_layers = {_show(p.stage_layers)}: expected {stages} entries "
                              f"(parallel.pp * parallel.virtual_stages), one per pipeline stage")
        if any(c < 1 for c in p.stage_layers) or (n_layer is not None and sum(p.stage_layers) != n_layer):
            raise ConfigError(f"parallel.stage_layers = {_show(p.stage_layers)}: expected positive layer counts that "
                              f"add up to model.n_layer = {n_layer}")


def check_pipeline_microbatches(config: Config, dp: int) -> None:
    """Interleaved 1F1B needs each rank's micro-batch count to be a multiple of pp."""
    p, t = config.parallel, config.train
    if p.pp == 1 or p.schedule != "interleaved":
        return
    for samples in rank_samples(config, dp):
        m = samples // t.micro_batch_size
        if m % p.pp:
            raise ConfigError(
                f"parallel.schedule = \"interleaved\": {m} micro-batches per step (train.global_batch_size / "
                f"(train.micro_batch_size * data-parallel size) = {t.global_batch_size} / ({t.micro_batch_size} * "
                f"{dp})) must be a multiple of parallel.pp = {p.pp}")


def rank_samples(config: Config, dp: int) -> list[int]:
    """Sequences of each global batch that each data-parallel rank takes (dp_shares, or equal parts)."""
    t, shares = config.train, config.parallel.dp_shares
    if shares is None:
        return [t.global_batch_size // dp] * dp
    return [t.global_batch_size * s // sum(shares) for s in shares]


def check_batch_split(config: Config, dp: int) -> None:
    t, shares = config.train, config.parallel.dp_shares
    if shares is not None:
        if len(shares) != dp:
            raise ConfigError(f"parallel.dp_shares = {_show(shares)}: expected {dp} shares, one per "
                              f"data-parallel rank")
        total = sum(shares)
        for s in shares:
            if (t.global_batch_size * s) % total or (t.global_batch_size * s // total) % t.micro_batch_size:
                raise ConfigError(
                    f"parallel.dp_shares = {_show(shares)}: train.global_batch_size = {t.global_batch_size} "
                    f"does not split into these shares in whole multiples of train.micro_batch_size = "
                    f"{t.micro_batch_size}")
        return
    if t.global_batch_size % (t.micro_batch_size * dp) != 0:
        raise ConfigError(
            f"train.global_batch_size = {t.global_batch_size}: expected a multiple of "
            f"train.micro_batch_size * data-parallel size = {t.micro_batch_size} * {dp}"
        )
    check_pipeline_microbatches(config, dp)


# ---------------------------------------------------------------- writing

def dumps_toml(sections: dict[str, dict[str, Any]]) -> str:
    """A TOML writer for flat sections of scalars and lists (None values are left out)."""
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
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
