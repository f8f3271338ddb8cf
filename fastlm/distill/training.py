"""Distillation in the shared training step: TrainStep's loss_of hook plus the student head's fused loss.

    distill = Distillation.setup(config, pm, tokenizer_path, device)    # None without [distill]
                                                                        # (encoder students: masked_lm.py)
    step = TrainStep(pm, optimizer, loss_of=distill.loss_of, ...)

loss_of runs the frozen teacher on the micro-batch (no gradients; its hidden states only, never its
logits), then the student's ordinary forward. The student's LM head offers fused_cross_entropy
(fastlm.nn.head's duck-typed hook): Distillation replaces it, for this run's model, by
    alpha * divergence(student, teacher) + (1 - alpha) * cross-entropy(labels)
computed by one linear_distill_loss call (ce_weight: the cross-entropy from the same chunks of logits),
so the student's and the teacher's (tokens x vocab) logits are made chunk by chunk and never stored.
Evaluation asks the head for logits and gets the plain cross-entropy (validation perplexity).
"""
from __future__ import annotations

from pathlib import Path

import torch

from fastlm import ops
from fastlm.data.inputs import model_inputs
from fastlm.train.errors import ConfigError


class Distillation:
    def __init__(self, section, head: torch.nn.Module, teacher=None, store=None):
        self.section, self.head, self.teacher, self.store = section, head, teacher, store
        self._teacher_batch = None  # the current micro-batch's teacher: hidden states or stored top-k bins
        self._cross_entropy = type(head).fused_cross_entropy.__get__(head)  # the head class's own fused loss
        head.fused_cross_entropy = self._head_loss

    @classmethod
    def setup(cls, config, pm, tokenizer_path: Path | None, device: torch.device) -> "Distillation | None":
        section = config.distill
        if not section.enabled:
            return None
        if config.model.is_encoder:
            return cls._setup_masked_lm(section, pm, tokenizer_path, device)
        head = getattr(pm.module, "lm_head", None)
        if head is None or getattr(head, "fused_cross_entropy", None) is None or getattr(head, "bias", None) is not None:
            raise ConfigError("[distill]: the student's LM head must be a fastlm Linear without bias "
                              "(model.linear = \"fastlm\", no int8/LoRA head)")
        vocab = head.weight.shape[0]
        if section.teacher_store:
            from fastlm.distill.store import TeacherStore

            return cls(section, head, store=TeacherStore.open(section.teacher_store, section, vocab))
        from fastlm.distill.teacher import load_teacher

        return cls(section, head, teacher=load_teacher(section, tokenizer_path, vocab, device))

    @staticmethod
    def _setup_masked_lm(section, pm, tokenizer_path, device):
        from fastlm.distill.masked_lm import MaskedLMDistillation
        from fastlm.distill.teacher import load_teacher

        vocab = pm.module.mlm_head.decoder.weight.shape[0]
        return MaskedLMDistillation(section, load_teacher(section, tokenizer_path, vocab, device,
                                                          encoder_student=True))

    def teacher_targets(self, batch):
        """What the head loss needs from the teacher for this micro-batch."""
        if self.store is not None:
            return self.store.next(batch)
        inputs = model_inputs(batch)
        with torch.no_grad():
            return self.teacher.hidden_states(inputs["input_ids"], None, inputs.get("cu_seqlens"))

    def loss_of(self, runner, batch) -> torch.Tensor:
        self._teacher_batch = self.teacher_targets(batch)
        try:
            return runner(**model_inputs(batch))[1]
        finally:
            self._teacher_batch = None

    def _head_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        teacher = self._teacher_batch
        if teacher is None:  # not called from loss_of (e.g. another trainer's plain forward): the hard labels
            return self._cross_entropy(hidden, targets)
        s = self.section
        if s.alpha <= 0:
            return self._cross_entropy(hidden, targets)
        # alpha * (divergence + (1 - alpha) / alpha * cross-entropy): one pass over the student's logits
        kw = dict(loss=s.loss, beta=float(s.beta), temperature=float(s.temperature), labels=targets,
                  ce_weight=(1 - s.alpha) / s.alpha)
        if isinstance(teacher, tuple):  # offline: (log-probabilities (N, k + 1), token ids (N, k))
            kd = ops.linear_distill_loss(hidden, self.head.weight, teacher_topk=teacher, **kw)
        else:
            weight = self.teacher.lm_head.weight
            kd = ops.linear_distill_loss(hidden, self.head.weight, teacher.to(weight.dtype), teacher_weight=weight,
                                         top_k=int(s.top_k), **kw)
        return s.alpha * kd
