"""Training configuration: one dataclass per TOML section, presets, `--set` overrides.

    config = load_config("tiny", ["train.steps=50", "train.precision=fp32"])

A config error is a `ConfigError` whose message is one line naming the key, the value and what
was expected, so the CLI can print it as is.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from fastlm.train.config_checks import (  # noqa: F401 - the checks are part of this module's API
    LINEARS,
    PRECISIONS,
    check_batch_split,
    check_checkpoint_key,
    check_pipeline_microbatches,
    rank_samples,
    saved_run_config,
    validate,
)
from fastlm.distill.config import DistillSection
from fastlm.federated.config import FederatedSection
from fastlm.privacy.config import PrivacySection
from fastlm.train.errors import ConfigError
from fastlm.train.model_section import DEFAULT_FAMILY, MODEL_SECTIONS, GPTSection, ModelSection
from fastlm.train.toml_text import dumps_toml
from fastlm.train.toml_text import show as _show


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
    # Recurrent families (rnn | lstm | gru): each batch row continues the previous batch's row (consecutive
    # windows of long streams) and the model carries its detached state across them (truncated BPTT).
    stateful: bool = False
    # Counterfactual augmentation (fastlm/data/counterfactual.py): a mirrored copy of each training document with
    # paired terms swapped (he <-> she, king <-> queen), added when the corpus is prepared (part of its cache key).
    counterfactual: str | None = None    # "gender" (built-in word pairs) or a file of word pairs; None: none
    # Canaries (fastlm/data/canaries.py, Carlini et al.'s "Secret Sharer"): random secrets "my secret number is
    # d d d d d d d d d" planted in the training split only, recorded in RUN_DIR/canaries.json for `fastlm privacy audit`.
    canaries: int = 0                    # how many secrets (drawn from train.seed); 0: none
    canary_repeats: int = 1              # copies of each secret (Carlini plants each 1 to thousands of times)
    # De-identification (fastlm/data/deid/) of every document before tokenization; part of the prepared-cache key.
    deidentify: list[str] | str | None = None  # entity types (["email", "phone", ...]) or "all"; None: none
    deid_operation: str = "anonymize"    # anonymize | pseudonymize | generalize | perturb | suppress
    deid_key_file: str | None = None     # HMAC key file (its bytes) for the keyed operations (pseudonymize, perturb)
    # Parallel preparation (fastlm/data/encode_pool.py): processes that tokenize the corpus; the token files are
    # byte-identical for any number (not part of the cache key). Splits above 2^28 tokens go in several files.
    workers: int = 1


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
    optimizer: str = "adamw"             # adamw (fastlm.optim.AdamW on CPU, torch's fused on CUDA) | fastlm_adamw
    #                                      | sgd (plain SGD with train.momentum; FedAvg's classic client)
    momentum: float = 0.0                # sgd only
    # CUDA only: AdamW states and fp32 master weights in pinned CPU memory, stepped there by the native CPU
    # AdamW bucket by bucket as the gradients arrive (fastlm.optim.offload); one process, no tp / pp yet.
    optimizer_offload: bool = False
    log_every: int = 10
    eval_every: int = 500                # also always at step 0 and at the end; 0: only those
    eval_batches: int = 20               # validation batches of micro_batch_size sequences
    activation_checkpointing: bool = False
    compile: bool = False                # torch.compile every Transformer block (fullgraph), applied from outside
    tensorboard: bool = False            # also log to RUN_DIR/tensorboard (if installed)
    # Adversarial training (fastlm.tasks.adversarial): perturb the input embeddings along the loss
    # gradient and train on the perturbed loss too. "fgm" (one step) | "pgd" (projected steps) | "none".
    adversarial: str = "none"
    adversarial_epsilon: float = 1.0     # L2 norm of each token's embedding perturbation (at most)
    adversarial_steps: int = 3           # pgd ascent steps
    adversarial_alpha: float = 0.0       # pgd step size; 0: 2.5 * epsilon / steps
    # Adversarial debiasing of a classifier (fastlm.tasks.debias): an adversary predicts task.group_field
    # from the pooled representation through gradient reversal. "none" | "adversarial".
    debias: str = "none"
    debias_weight: float = 1.0           # the reversed gradient's scale: how hard the encoder hides the group
    # Continual adaptation (fastlm.train.replay): this share of every batch comes from the training stream of
    # model.init_from's run (its config.toml's [data]), to limit forgetting; 0: none. In fastlm finetune
    # those slots are causal-LM windows next to the task's examples (fastlm.tasks.replay).
    replay: float = 0.0


@dataclass
class ParallelSection:
    dp: int | str = "auto"               # data-parallel degree, or "auto" (= the processes left)
    tp: int = 1                          # tensor parallel: Megatron-style splits of every layer
    sequence_parallel: bool = False      # with tp > 1: norms and dropout on 1/tp of each sequence
    pp: int = 1
    bucket_mb: float = 25.0              # gradient all-reduce bucket size
    grad_reduce_dtype: str = "fp32"      # fp32 (as the gradients) | bf16 | fp16: communicate in 16 bits
    shard_optimizer: bool = False        # ZeRO-1: each rank keeps and steps 1/dp of the optimizer state
    dp_shares: list[int] | str | None = None  # e.g. [3, 1]: each rank's share of every global batch; or "dynamic"
    rebalance_every: int = 50            # dp_shares = "dynamic": steps between re-solving the shares from speeds
    sync: str = "every_step"             # every_step | local_sgd (average parameters every sync_every steps) | async
    #                                      | param_server (fastlm.parallel.param_server)
    sync_every: int = 1
    max_staleness: int = 1               # sync = "async": steps an average may be in flight before it is waited for
    #                                      (sync = "param_server": steps a worker may run ahead of its last pull)
    param_servers: int = 1               # sync = "param_server": the first this many ranks each serve one shard
    timeout_s: float = 300.0             # a collective that takes longer fails, naming the missing rank
    # Pipeline parallel (pp > 1): see fastlm.parallel.pipeline
    schedule: str = "1f1b"               # gpipe | 1f1b | interleaved
    virtual_stages: int = 1              # model chunks per pipeline rank (interleaved only)
    stage_layers: list[int] | None = None  # blocks per stage (pp x virtual_stages entries); default: balanced
    stage_balance: str = "params"        # params | time: what balances the stages without stage_layers

    @property
    def fixed_shares(self) -> list[int] | None:
        """dp_shares as a list (None when equal, or dynamic: fastlm.parallel.dynamic_shares sets them at run time)."""
        return None if isinstance(self.dp_shares, str) else self.dp_shares


@dataclass
class CheckpointSection:
    every: int = 1000                    # steps between checkpoints (and at the end); 0: none
    keep: int = 3                        # newest checkpoints kept
    encrypt: bool = False                # AES-256-GCM checkpoints and weights (fastlm.privacy.encryption)
    key_file: str | None = None          # the key's file (base64); else env FASTLM_CHECKPOINT_KEY


@dataclass
class Config:
    model: ModelSection = field(default_factory=GPTSection)  # the family's section (model_section.py)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    privacy: PrivacySection = field(default_factory=PrivacySection)
    federated: FederatedSection = field(default_factory=FederatedSection)
    distill: DistillSection = field(default_factory=DistillSection)
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
    "privacy": PrivacySection,
    "federated": FederatedSection,
    "distill": DistillSection,
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


def load_saved_config(path: str | os.PathLike) -> Config:
    """A finished run's config.toml (init_from, eval, replay): validated like any config, except the batch
    split, which belongs to the launch that trained the run."""
    with saved_run_config():
        return load_config(path)


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
        if dataclasses.is_dataclass(opt) and isinstance(value, dict):  # an inline table, e.g. {clip = 1.0}
            return _build_section(key.split(".")[0], opt, value, f" in {key}")
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
        elif dataclasses.is_dataclass(opt):
            words.append("a table {" + ", ".join(f.name + " = ..." for f in fields(opt)) + "}")
        elif typing.get_origin(opt) is list:
            words.append(f"a list of {names[typing.get_args(opt)[0]][2:]}s")
        else:
            words.append(names.get(opt, str(opt)))
    return " or ".join(words)
