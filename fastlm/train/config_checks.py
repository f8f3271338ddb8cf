"""Checks of a whole training config (fastlm.train.config): each failure is a ConfigError whose
one line names the key, the value and what was expected. The checks read the sections by
attribute only, so this module imports nothing from config.py (which re-exports them).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import os
from typing import TYPE_CHECKING

from fastlm.distill.config import validate_distill
from fastlm.federated.config import validate_federated
from fastlm.privacy.config import validate_privacy
from fastlm.privacy.encryption import load_key
from fastlm.train.errors import ConfigError, FastlmError
from fastlm.train.lora import check_lora
from fastlm.train.replay import check_replay
from fastlm.train.model_section import MODEL_SECTIONS
from fastlm.train.toml_text import show as _show

if TYPE_CHECKING:  # annotations only: config.py imports this module
    from fastlm.train.config import Config, ParallelSection, TrainSection

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LINEARS = ("default", "int8_train")
OPTIMIZERS = ("adamw", "fastlm_adamw", "sgd")


_SAVED_RUN = contextvars.ContextVar("fastlm_saved_run_config", default=False)


@contextlib.contextmanager
def saved_run_config():
    """Validate a finished run's config.toml inside: all but the batch split, which was checked against the
    launch that trained the run, not this one (a run of 1 process read as init_from by 4 processes)."""
    token = _SAVED_RUN.set(True)
    try:
        yield
    finally:
        _SAVED_RUN.reset(token)


def validate(config: Config) -> None:
    t, d, p = config.train, config.data, config.parallel
    if t.precision not in PRECISIONS:
        raise ConfigError(f"train.precision = {_show(t.precision)}: expected one of {', '.join(PRECISIONS)}")
    if config.model.linear not in LINEARS:
        raise ConfigError(f"model.linear = {_show(config.model.linear)}: expected one of {', '.join(LINEARS)}")
    check_lora(config)
    check_replay(config)
    if config.model.init_embeddings and config.model.family == "vit":
        raise ConfigError("model.init_embeddings: model.family = \"vit\" reads pixels and has no token embedding")
    if config.model.init_embeddings and config.model.is_fitted:
        raise ConfigError(f"model.init_embeddings: model.family = {_show(config.model.family)} is fitted from counts "
                          "and has no token embedding to initialise")
    if d.canaries and config.model.is_fitted:  # fastlm privacy audit scores models trained by gradient steps
        raise ConfigError(f"data.canaries = {_show(d.canaries)}: model.family = {_show(config.model.family)} is fitted "
                          "from counts; canaries are for models trained by `fastlm train` steps")
    if d.counterfactual is not None and (not isinstance(d.counterfactual, str) or not d.counterfactual.strip()):
        raise ConfigError(f"data.counterfactual = {_show(d.counterfactual)}: expected \"gender\" or a file of word pairs")
    _validate_numbers(config)
    _validate_model_parallel(config)
    _validate_tensor_parallel(config)
    _validate_pipeline(config)
    _validate_parallel(p, t)
    if isinstance(config.parallel.dp_shares, str):
        _validate_dynamic_shares(config)
    _validate_adversarial(t)
    if t.debias not in ("none", "adversarial"):
        raise ConfigError(f"train.debias = {_show(t.debias)}: expected one of none, adversarial")
    if not (t.debias_weight > 0 and math.isfinite(t.debias_weight)):
        raise ConfigError(f"train.debias_weight = {_show(t.debias_weight)}: expected a positive number")
    validate_privacy(config)
    validate_federated(config)
    validate_distill(config)
    _validate_encryption(config)
    if t.optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer = {_show(t.optimizer)}: expected one of {', '.join(OPTIMIZERS)}")
    if not 0 <= t.momentum < 1:
        raise ConfigError(f"train.momentum = {_show(t.momentum)}: expected a number in [0, 1)")
    _validate_optimizer_offload(config)
    _check_launch_batch_split(config)
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
    _validate_deid(d)
    if d.stateful and not type(config.model).carries_state:
        recurrent = " | ".join(family for family, section in MODEL_SECTIONS.items() if section.carries_state)
        raise ConfigError(f"data.stateful = true: only for recurrent models (model.family = {recurrent}), "
                          f"not {_show(config.model.family)}")


def _validate_numbers(config: Config) -> None:
    """The counts, rates and fractions that must be positive, >= 0 or in range."""
    t, d, p, c = config.train, config.data, config.parallel, config.checkpoint
    positive = {
        "train.steps": t.steps, "train.global_batch_size": t.global_batch_size,
        "train.micro_batch_size": t.micro_batch_size, "train.log_every": t.log_every,
        "train.eval_batches": t.eval_batches, "data.vocab_size": d.vocab_size, "data.seq_len": d.seq_len,
        "parallel.tp": p.tp, "parallel.pp": p.pp, "checkpoint.keep": c.keep, "data.canary_repeats": d.canary_repeats,
        "data.workers": d.workers,
    }
    if p.dp != "auto":
        positive["parallel.dp"] = p.dp
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} = {_show(value)}: expected a positive integer")
    non_negative = {
        "train.warmup_steps": t.warmup_steps, "train.eval_every": t.eval_every, "checkpoint.every": c.every,
        "train.min_lr": t.min_lr, "train.weight_decay": t.weight_decay, "train.grad_clip": t.grad_clip,
        "data.canaries": d.canaries,
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


def _check_launch_batch_split(config: Config) -> None:
    """The global batch against this launch's data-parallel size (not for a finished run's config.toml)."""
    if _SAVED_RUN.get():
        return
    p = config.parallel
    # Outside a launch (no WORLD_SIZE: loading a finished run for eval/generate, or a config in a
    # notebook) dp = "auto" has no process count yet: dp_shares say how many ranks there will be.
    # Trainer.fit checks the split again against the real data-parallel size.
    unlaunched_shares = p.dp == "auto" and p.fixed_shares is not None and "WORLD_SIZE" not in os.environ
    check_batch_split(config, len(p.fixed_shares) if unlaunched_shares else config.dp_size())


def _validate_deid(d) -> None:
    """data.deidentify / deid_operation / deid_key_file (fastlm.data.deid)."""
    from fastlm.data.deid.detectors import DETECTORS
    from fastlm.data.deid.operations import KEYED, OPERATIONS

    if d.deidentify is None or d.deidentify == "all":
        types = []
    elif isinstance(d.deidentify, str):
        raise ConfigError(f"data.deidentify = {_show(d.deidentify)}: expected \"all\" or a list of types "
                          f"({', '.join(DETECTORS)})")
    else:
        types = d.deidentify
    unknown = [t for t in types if t not in DETECTORS]
    if unknown:
        raise ConfigError(f"data.deidentify: unknown type(s) {', '.join(map(_show, unknown))}; expected \"all\" "
                          f"or some of {', '.join(DETECTORS)}")
    if d.deid_operation not in OPERATIONS:
        raise ConfigError(f"data.deid_operation = {_show(d.deid_operation)}: expected one of {', '.join(OPERATIONS)}")
    if d.deid_operation in KEYED and d.deidentify and not d.deid_key_file:
        raise ConfigError(f"data.deid_operation = {_show(d.deid_operation)}: needs data.deid_key_file (an HMAC key)")


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


def _validate_encryption(config: Config) -> None:
    """[checkpoint] encrypt / key_file: their shape (whether the key is there: check_checkpoint_key)."""
    c, p = config.checkpoint, config.parallel
    if c.key_file is not None and not c.key_file.strip():
        raise ConfigError('checkpoint.key_file = "": expected the path of a key file (or leave it out)')
    if not c.encrypt:
        if c.key_file is not None:
            raise ConfigError(f"checkpoint.key_file = {_show(c.key_file)}: set checkpoint.encrypt = true too "
                              f"(nothing is encrypted without it)")
        return
    if p.tp > 1 or p.pp > 1:  # torch.distributed.checkpoint writes its shards' plaintext itself
        raise ConfigError(f"checkpoint.encrypt = true: not available with sharded checkpoints (parallel.tp = "
                          f"{p.tp}, parallel.pp = {p.pp}; expected 1 and 1)")
    if config.model.is_fitted:
        raise ConfigError(f"checkpoint.encrypt = true: not available for model.family = "
                          f"{_show(config.model.family)} (a fitted model, not written through checkpoints)")


def check_checkpoint_key(config: Config) -> None:
    """With checkpoint.encrypt, the key must be there and valid before training starts (ConfigError)."""
    if not config.checkpoint.encrypt:
        return
    try:
        load_key(config.checkpoint.key_file)
    except FastlmError as e:
        raise ConfigError(f"checkpoint.encrypt = true: {e}") from None


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


def _validate_model_parallel(config: Config) -> None:
    """A family that trains with data parallelism only (maxent) takes neither tp nor pp."""
    if not type(config.model).data_parallel_only:
        return
    for key, value in (("parallel.tp", config.parallel.tp), ("parallel.pp", config.parallel.pp)):
        if value != 1:
            raise ConfigError(f"{key} = {_show(value)}: model.family = {_show(config.model.family)} trains with data "
                              f"parallelism only (expected {key} = 1)")


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
                     (p.sync != "every_step", f'parallel.sync = "{p.sync}"'),
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
SYNC_MODES = ("every_step", "local_sgd", "async", "param_server")


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
    if p.sync_every != 1 and p.sync == "every_step":
        raise ConfigError(f"parallel.sync_every = {p.sync_every}: only used with parallel.sync = \"local_sgd\" "
                          f"or \"async\"")
    if p.max_staleness < 0:
        raise ConfigError(f"parallel.max_staleness = {_show(p.max_staleness)}: expected an integer >= 0")
    _validate_param_server(p, t)
    if p.shard_optimizer and p.sync != "every_step":
        raise ConfigError(f'parallel.shard_optimizer = true: not available with parallel.sync = "{p.sync}" '
                          '(each rank keeps its whole optimizer state)')
    if p.shard_optimizer and t.precision == "fp16":
        raise ConfigError('parallel.shard_optimizer = true: not available with train.precision = "fp16" '
                          '(use "bf16")')
    if p.dp_shares is not None and not isinstance(p.dp_shares, str):
        if not p.dp_shares or any(s < 1 for s in p.dp_shares):
            raise ConfigError(f"parallel.dp_shares = {_show(p.dp_shares)}: expected a list of positive integers, "
                              f"one per data-parallel rank")


def _validate_param_server(p: ParallelSection, t: TrainSection) -> None:
    """parallel.sync = "param_server" (fastlm.parallel.param_server) and what it cannot combine with."""
    if not isinstance(p.param_servers, int) or isinstance(p.param_servers, bool) or p.param_servers < 1:
        raise ConfigError(f"parallel.param_servers = {_show(p.param_servers)}: expected a positive integer")
    if p.sync != "param_server":
        if p.param_servers != 1:
            raise ConfigError(f"parallel.param_servers = {p.param_servers}: only used with parallel.sync = "
                              f"\"param_server\"")
        return
    refusals = {"parallel.sync_every = {} (each step pushes its gradient)".format(p.sync_every): p.sync_every != 1,
                "parallel.dp_shares (each worker's gradient is applied on its own)": p.dp_shares is not None,
                'train.precision = "fp16" (use "bf16")': t.precision == "fp16"}
    for what, refused in refusals.items():
        if refused:
            raise ConfigError(f'parallel.sync = "param_server": not available with {what}')


def _validate_optimizer_offload(config: Config) -> None:
    """What train.optimizer_offload cannot be combined with yet (the device is checked by build_optimizer)."""
    t, p = config.train, config.parallel
    if not t.optimizer_offload:
        return
    privacy = getattr(config, "privacy", None)
    conflicts = [(t.optimizer == "sgd", 'train.optimizer = "sgd" (it offloads AdamW)'),
                 (t.precision == "fp16", 'train.precision = "fp16" (use "bf16")'),
                 (p.tp > 1 or p.pp > 1, "parallel.tp > 1 or parallel.pp > 1"),
                 (p.shard_optimizer, "parallel.shard_optimizer = true"),
                 (p.sync != "every_step", f'parallel.sync = "{p.sync}"'),
                 (privacy is not None and getattr(privacy, "dp_sgd", False), "privacy.dp_sgd = true")]
    for bad, what in conflicts:
        if bad:
            raise ConfigError(f"train.optimizer_offload = true: not available with {what} yet")


def _validate_dynamic_shares(config: Config) -> None:
    """parallel.dp_shares = "dynamic" (fastlm.parallel.dynamic_shares) and what it cannot combine with."""
    p = config.parallel
    if p.dp_shares != "dynamic":
        raise ConfigError(f"parallel.dp_shares = {_show(p.dp_shares)}: expected a list of positive integers "
                          f"(one per data-parallel rank) or \"dynamic\"")
    if p.rebalance_every < 1:
        raise ConfigError(f"parallel.rebalance_every = {_show(p.rebalance_every)}: expected a positive integer")
    refusals = {"parallel.pp > 1 (the pipeline cuts equal micro-batches)": p.pp > 1,
                f"parallel.sync = \"{p.sync}\" (parameter averaging is not weighted by samples)": p.sync != "every_step",
                "data.stateful = true (each rank owns fixed streams)": config.data.stateful}
    for what, refused in refusals.items():
        if refused:
            raise ConfigError(f"parallel.dp_shares = \"dynamic\": not available with {what}")


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
    groups = getattr(config.model, "n_layer_groups", None)
    if groups is not None and groups != n_layer:
        raise ConfigError(f"parallel.pp = {p.pp}: model.n_layer_groups = {groups} shares blocks between layers "
                          f"(ALBERT); a pipeline stage needs layers of its own (n_layer_groups = n_layer)")
    if config.train.precision == "fp16":
        raise ConfigError('parallel.pp > 1: not available with train.precision = "fp16" (use "bf16")')
    if p.shard_optimizer:
        raise ConfigError("parallel.shard_optimizer = true: not available with parallel.pp > 1 yet")
    if p.sync != "every_step":
        raise ConfigError(f'parallel.sync = "{p.sync}": not available with parallel.pp > 1')
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
    t, shares = config.train, config.parallel.fixed_shares
    if config.parallel.dp_shares == "dynamic":  # where the shares start
        from fastlm.data.loader import equal_shares

        return equal_shares(t.global_batch_size, dp)
    if shares is None:
        return [t.global_batch_size // dp] * dp
    return [t.global_batch_size * s // sum(shares) for s in shares]


def check_batch_split(config: Config, dp: int) -> None:
    t, shares = config.train, config.parallel.fixed_shares
    if config.federated.enabled:  # the ranks split the clients; each client's step takes the whole batch
        dp = 1
    if config.parallel.dp_shares == "dynamic":  # any split of at least one sequence per rank
        if t.global_batch_size < dp:
            raise ConfigError(f"parallel.dp_shares = \"dynamic\": train.global_batch_size = {t.global_batch_size} "
                              f"is less than one sequence for each of the {dp} data-parallel ranks")
        return
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


