"""Distillation of an encoder student (BERT / RoBERTa / ALBERT) from an encoder teacher, masked-LM objective.

    distill = MaskedLMDistillation(section, teacher)        # made by Distillation.setup for encoder students
    step = TrainStep(pm, optimizer, loss_of=distill.loss_of, ...)

Both models read the same masked micro-batch (the loader's masking, so teacher and student see the same
[MASK]s); the loss counts the masked positions only (labels != -100):
    alpha * divergence(student, teacher) + (1 - alpha) * cross-entropy(labels)
The masked-LM head makes its logits anyway (it has a bias and a transform before the decoder), so the
divergence is fastlm.ops.logits_distill_loss of the masked rows' logits.
"""
from __future__ import annotations

import torch

from fastlm import ops
from fastlm.data.inputs import model_inputs


class MaskedLMDistillation:
    def __init__(self, section, teacher):
        self.section, self.teacher = section, teacher

    def loss_of(self, runner, batch) -> torch.Tensor:
        inputs = model_inputs(batch)
        labels = inputs.pop("labels")
        logits = runner(**inputs)  # (B, S, V): the student's forward without labels returns its logits
        masked = labels != -100
        student, targets = logits[masked], labels[masked]
        s = self.section
        ce = ops.cross_entropy(student, targets)
        if s.alpha <= 0:
            return ce
        with torch.no_grad():
            teacher = self.teacher(**inputs)[masked]
        kd = ops.logits_distill_loss(student, teacher, loss=s.loss, beta=float(s.beta),
                                     temperature=float(s.temperature), top_k=int(s.top_k))
        return s.alpha * kd + (1 - s.alpha) * ce
