"""The teacher: a fastlm run or a Hugging Face checkpoint, loaded frozen, checked against the student.

The student learns the teacher's distribution over the same token ids, so both must use the same
tokenizer: a different vocabulary (or tokenizer file) is a one-line error, never a silently wrong target.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from fastlm.train.errors import ConfigError


def _vocabulary(tokenizer_json: Path) -> dict:
    try:
        data = json.loads(Path(tokenizer_json).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the tokenizer {str(tokenizer_json)!r}: {e}") from None
    return {"vocab": data.get("model", {}).get("vocab"), "merges": data.get("model", {}).get("merges"),
            "added": [(t.get("id"), t.get("content")) for t in data.get("added_tokens", [])]}


def check_same_tokenizer(teacher_dir: str, teacher_tokenizer: Path | None, student_tokenizer: Path | None) -> None:
    """ConfigError unless the teacher's tokenizer.json maps text to the same ids as the student's."""
    where = f"distill.teacher = {teacher_dir!r}"
    if teacher_tokenizer is None:
        raise ConfigError(f"{where} has no tokenizer.json: cannot check that the student (same token ids) matches it")
    if student_tokenizer is None:
        raise ConfigError(f"{where}: the student has no tokenizer file to compare (set data.tokenizer to the "
                          f"teacher's tokenizer.json)")
    if _vocabulary(teacher_tokenizer) != _vocabulary(student_tokenizer):
        raise ConfigError(f"{where}: the teacher's tokenizer ({teacher_tokenizer}) differs from the student's "
                          f"({student_tokenizer}); distillation needs the same tokenizer (set data.tokenizer = "
                          f"\"{teacher_tokenizer}\")")


def _check_kind(where: str, model, encoder_student: bool) -> None:
    """A causal student needs a causal teacher with an LM head; an encoder student a masked-LM encoder."""
    from fastlm.models import Encoder, EncoderForMaskedLM

    if encoder_student:
        if isinstance(model, Encoder):
            raise ConfigError(f"{where}: the encoder teacher has no masked-LM head (a bare encoder checkpoint); "
                              f"give a masked-LM run or checkpoint (e.g. BertForMaskedLM)")
        if not isinstance(model, EncoderForMaskedLM):
            raise ConfigError(f"{where} is a causal (decoder) language model, but the student is an encoder: "
                              f"masked-LM distillation needs an encoder teacher (bert, roberta, albert)")
    elif isinstance(model, (Encoder, EncoderForMaskedLM)):
        raise ConfigError(f"{where} is an encoder (masked LM), but the student is a causal GPT: give a causal "
                          f"teacher, or distill an encoder student (model.family = bert | roberta | albert)")
    elif not hasattr(model, "hidden_states") or getattr(model, "lm_head", None) is None:
        raise ConfigError(f"{where}: expected a causal language model (GPT / LLaMA) with an LM head")


def load_teacher(section, student_tokenizer: Path | None, student_vocab: int | None, device: torch.device,
                 encoder_student: bool = False):
    """The teacher model from section.teacher: frozen, eval mode, on device (int8 when teacher_int8)."""
    from fastlm.train.run import init_model_from

    model, tokenizer = init_model_from(section.teacher)
    where = f"distill.teacher = {section.teacher!r}"
    _check_kind(where, model, encoder_student)
    check_same_tokenizer(section.teacher, tokenizer, student_tokenizer)
    head = model.mlm_head.decoder if encoder_student else model.lm_head
    vocab = head.weight.shape[0]
    if student_vocab is not None and vocab != student_vocab:
        raise ConfigError(f"{where}: the teacher's vocabulary has {vocab} tokens, the student's {student_vocab}")
    if not encoder_student and getattr(model.lm_head, "bias", None) is not None:
        raise ConfigError(f"{where}: a teacher head with a bias is not supported")
    if section.teacher_int8:
        from fastlm.quant import quantize_model

        # the head stays float: its logits are made chunk by chunk (or are the masked-LM head's output)
        quantize_model(model, "w8a8", skip=["mlm_head.decoder" if encoder_student else "lm_head"])
    model.requires_grad_(False)
    return model.eval().to(device)
