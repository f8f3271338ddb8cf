"""Adversarial debiasing of a classifier (Ganin & Lempitsky 2015's gradient reversal; the adversary
sees the true label too, as in Zhang, Lemoine & Mitchell 2018, so it targets equalized odds).

    [task]  group_field = "group"        # the column naming each example's group
    [train] debias = "adversarial"       # "none" (default) | "adversarial"
            debias_weight = 1.0          # how strongly the encoder is pushed to hide the group

An adversary head (a small MLP) predicts each example's group from the classifier's pooled
representation and its true label. It minimizes its cross-entropy like any head; between it and
the pooled vector a gradient-reversal layer (identity forward, gradient times -debias_weight
backward) makes the encoder maximize the same loss: the representation keeps what predicts the
label and loses what reveals the group beyond the label. Given the label, a prediction that
carries no group information has equal TPR and FPR across groups (equalized odds).

It plugs into the ordinary training step: build_model wraps the classifier (DebiasedClassifier,
whose forward adds the adversary's group logits in training) and the step's loss_of adds the
adversary's loss (debiased_task_loss). Inference and evaluation use the classifier's logits only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DEBIAS = ("none", "adversarial")


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by -weight."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.weight * grad, None


def grad_reverse(x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    return GradientReversal.apply(x, weight)


class GroupAdversary(nn.Module):
    """[pooled vector, one-hot true label] -> hidden -> group logits."""

    def __init__(self, d_model: int, num_labels: int, num_groups: int, hidden: int = 64):
        super().__init__()
        self.num_labels = num_labels
        self.net = nn.Sequential(nn.Linear(d_model + num_labels, hidden), nn.GELU(), nn.Linear(hidden, num_groups))

    def forward(self, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        y = F.one_hot(labels, self.num_labels).to(pooled.dtype)
        return self.net(torch.cat([pooled, y], -1))


class DebiasedClassifier(nn.Module):
    """A classifier (forward(batch) -> {"logits", "loss", "pooled"}) and a group adversary on its
    pooled vector, behind gradient reversal. In training, with batch["groups"], the output also has
    "group_logits"."""

    def __init__(self, classifier: nn.Module, d_model: int, num_labels: int, num_groups: int, weight: float):
        super().__init__()
        self.classifier = classifier
        self.adversary = GroupAdversary(d_model, num_labels, num_groups)
        self.weight = weight

    def forward(self, batch: dict) -> dict:
        out = self.classifier(batch)
        if self.training and "groups" in batch and "labels" in batch:
            reversed_pooled = grad_reverse(out["pooled"], self.weight)
            out["group_logits"] = self.adversary(reversed_pooled, batch["labels"]).float()
        return out


def debiased_task_loss(runner, batch) -> torch.Tensor:
    """TrainStep's loss_of with debiasing: the task loss plus the adversary's group cross-entropy
    (examples of a group unknown to the adversary, -1, are left out)."""
    out = runner(batch)
    loss = out["loss"].float()
    if "group_logits" in out:
        known = batch["groups"] >= 0
        if known.any():
            loss = loss + F.cross_entropy(out["group_logits"][known], batch["groups"][known])
        else:  # keep the adversary in the graph (data parallelism expects every parameter's gradient)
            loss = loss + 0.0 * out["group_logits"].sum()
    return loss


@torch.no_grad()
def adversary_accuracy(model: DebiasedClassifier, batches) -> float | None:
    """How often the adversary names the group (from the pooled vector and the true label); None
    without examples of known groups. At or below what the label alone predicts (the share of each
    label's most common group): the representation hides the group."""
    was_training = model.training
    model.eval()
    right = total = 0
    try:
        for batch in batches:
            out = model.classifier(batch)
            known = batch["groups"] >= 0
            guess = model.adversary(out["pooled"], batch["labels"]).argmax(-1)
            right += int((guess == batch["groups"])[known].sum())
            total += int(known.sum())
    finally:
        model.train(was_training)
    return right / total if total else None
