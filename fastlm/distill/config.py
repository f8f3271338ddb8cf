"""The [distill] config section and its checks; fastlm.train.config holds it as `distill`.

    [distill]
    teacher = "runs/big"        # a fastlm run directory or a Hugging Face checkpoint directory ("": no distillation);
                                # an encoder (masked-LM) teacher for an encoder student
    loss = "kl"                 # kl | reverse_kl | jsd (generalized; beta weighs the teacher)
    beta = 0.5
    temperature = 2.0           # both distributions at temperature T, the loss times T^2 (Hinton)
    alpha = 0.5                 # loss = alpha * distillation + (1 - alpha) * cross-entropy on the labels
    top_k = 0                   # > 0: the teacher's top-k tokens plus one tail bin (0: the full distribution)
    teacher_int8 = false        # run the teacher in int8 (W8A8, fastlm.quant; its head stays in float)
    teacher_store = ""          # an offline teacher (fastlm distill --save-teacher DIR) instead of `teacher`
"""
from __future__ import annotations

import math
from dataclasses import dataclass

LOSSES = ("kl", "reverse_kl", "jsd")


@dataclass
class DistillSection:
    teacher: str = ""
    loss: str = "kl"
    beta: float = 0.5
    temperature: float = 1.0
    alpha: float = 0.5
    top_k: int = 0
    teacher_int8: bool = False
    teacher_store: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.teacher or self.teacher_store)


def validate_distill(config) -> None:
    """One-line ConfigErrors for [distill]."""
    from fastlm.train.errors import ConfigError  # here: fastlm.train's config imports this module
    from fastlm.train.toml_text import show

    s = config.distill
    for key in ("teacher", "teacher_store"):
        if not isinstance(getattr(s, key), str):
            raise ConfigError(f"distill.{key} = {show(getattr(s, key))}: expected a directory path (a string)")
    if s.loss not in LOSSES:
        raise ConfigError(f"distill.loss = {show(s.loss)}: expected one of {', '.join(LOSSES)}")
    if isinstance(s.beta, bool) or not isinstance(s.beta, (int, float)) or not 0 <= s.beta <= 1:
        raise ConfigError(f"distill.beta = {show(s.beta)}: expected a number between 0 and 1")
    if isinstance(s.alpha, bool) or not isinstance(s.alpha, (int, float)) or not 0 <= s.alpha <= 1:
        raise ConfigError(f"distill.alpha = {show(s.alpha)}: expected a number between 0 and 1")
    if isinstance(s.temperature, bool) or not isinstance(s.temperature, (int, float)) \
            or not (s.temperature > 0 and math.isfinite(s.temperature)):
        raise ConfigError(f"distill.temperature = {show(s.temperature)}: expected a positive number")
    if isinstance(s.top_k, bool) or not isinstance(s.top_k, int) or s.top_k < 0:
        raise ConfigError(f"distill.top_k = {show(s.top_k)}: expected an integer >= 0 (0: the full distribution)")
    if not s.enabled:
        return
    if s.teacher and s.teacher_store:
        raise ConfigError("distill.teacher and distill.teacher_store are both set: give one teacher")
    from fastlm.train.model_section import GPTSection

    if config.model.is_encoder:
        if s.teacher_store:
            raise ConfigError("distill.teacher_store with an encoder student: offline teachers hold causal LM "
                              "streams only (give distill.teacher)")
        if config.data.sentence_order:
            raise ConfigError("[distill] with data.sentence_order = true is not supported (the masked-LM "
                              "objective is distilled; turn sentence_order off)")
    elif not isinstance(config.model, GPTSection):
        raise ConfigError(f"[distill] with model.family = {show(config.model.family)}: distillation trains a causal "
                          f"GPT or an encoder (bert, roberta, albert) student")
    if config.parallel.tp > 1 or config.parallel.pp > 1:
        raise ConfigError("[distill] runs with data parallelism only (parallel.tp = 1, parallel.pp = 1)")
    if config.privacy.dp_sgd:
        raise ConfigError("[distill] with privacy.dp_sgd = true is not supported (per-sample gradients of the "
                          "distillation loss)")
