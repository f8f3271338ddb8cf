"""Adversarial training in embedding space: FGM (one step) and PGD (projected, several steps).

    [train] adversarial = "fgm" | "pgd", adversarial_epsilon, adversarial_steps, adversarial_alpha

The input embeddings are perturbed along the gradient of the loss and the model trains on the
perturbed loss too (Miyato et al. 2017, FGM; Madry et al. 2018, PGD). Norms are per token: every
token's embedding moves by a vector of L2 norm at most epsilon (FGM: exactly epsilon, where the
gradient is not zero; padding, which gets no gradient, does not move). Per token keeps the meaning
of epsilon independent of sequence length, padding and how an encoder packs its rows.

The perturbation is added by a forward hook on the model's token embedding (its output is the
same tensor for a GPT and for an Encoder), so any fastlm model works unchanged.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

METHODS = ("none", "fgm", "pgd")


class EmbeddingPerturbation:
    """A forward hook that records the token embedding's output and adds `delta` to it."""

    def __init__(self, embedding: nn.Embedding):
        self.delta: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self._handle = embedding.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self.delta is not None:
            if self.delta.shape != output.shape:
                raise RuntimeError(f"the perturbation has shape {tuple(self.delta.shape)}, the embedding "
                                   f"output {tuple(output.shape)} (the inputs changed between passes)")
            output = output + self.delta.to(output.dtype)
        self.output = output
        return output

    def remove(self) -> None:
        self._handle.remove()


@contextmanager
def perturbed(embedding: nn.Embedding):
    hook = EmbeddingPerturbation(embedding)
    try:
        yield hook
    finally:
        hook.remove()


def unit_per_token(g: torch.Tensor) -> torch.Tensor:
    """g / ||g|| along the last dimension (zero where g is zero)."""
    g = g.float()
    norm = g.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, g / norm.clamp_min(1e-30), torch.zeros_like(g))


def project_per_token(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The nearest point of the per-token L2 ball of radius epsilon."""
    norm = delta.norm(dim=-1, keepdim=True)
    return delta * torch.clamp(epsilon / norm.clamp_min(1e-30), max=1.0)


def attack(loss_fn: Callable[[], torch.Tensor], hook: EmbeddingPerturbation, method: str, epsilon: float,
           steps: int = 1, alpha: float | None = None, clean_loss: torch.Tensor | None = None) -> torch.Tensor:
    """The perturbation (detached, float32) of the embedding output that raises loss_fn().

    fgm: epsilon * g / ||g|| from the gradient g at the clean input (clean_loss: its loss, if the
    caller has it with its graph, saves a forward). pgd: `steps` ascent steps of size alpha
    (default 2.5 * epsilon / steps) along the normalized gradient, each projected back onto the
    epsilon ball, from a zero start. Only gradients with respect to the embedding are computed: the
    parameters' .grad are untouched.
    """
    if method == "fgm":
        hook.delta = None
        loss = clean_loss if clean_loss is not None else loss_fn()
        (g,) = torch.autograd.grad(loss, hook.output, retain_graph=clean_loss is not None)
        return (epsilon * unit_per_token(g)).detach()
    if method != "pgd":
        raise ValueError(f"unknown adversarial method {method!r} (expected fgm or pgd)")
    alpha = alpha if alpha is not None else 2.5 * epsilon / steps
    delta = None
    for _ in range(steps):
        if delta is None:
            hook.delta = None
            loss = loss_fn()
            base = hook.output
            delta = torch.zeros(base.shape, dtype=torch.float32, device=base.device, requires_grad=True)
            (g,) = torch.autograd.grad(loss, base)
        else:
            hook.delta = delta
            (g,) = torch.autograd.grad(loss_fn(), delta)
        delta = project_per_token(delta.detach() + alpha * unit_per_token(g), epsilon).requires_grad_(True)
    hook.delta = None
    return delta.detach()


def adversarial_backward(loss_fn: Callable[[], torch.Tensor], embedding: nn.Embedding, method: str,
                         epsilon: float, steps: int = 1, alpha: float | None = None, scale: float = 1.0,
                         clean_context=None, final_context=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of scale * (clean loss + adversarial loss); returns both losses (detached).

    clean_context / final_context: contexts for the clean and the adversarial backward (data
    parallel: the clean one under no_sync, so the gradients are communicated once, at the end).
    """
    from contextlib import nullcontext

    with perturbed(embedding) as hook:
        clean = loss_fn()
        with clean_context or nullcontext():
            delta = attack(loss_fn, hook, method, epsilon, steps, alpha,
                           clean_loss=clean if method == "fgm" else None)
            (clean * scale).backward()
        hook.delta = delta
        adv = loss_fn()
        with final_context or nullcontext():
            (adv * scale).backward()
    return clean.detach(), adv.detach()


def attacked_accuracy(task, model: nn.Module, examples: list, epsilon: float, method: str = "pgd",
                      steps: int = 5, alpha: float | None = None, batch_size: int = 64, device="cpu") -> float:
    """Classification accuracy when every input's embeddings are perturbed (per token, L2 norm at
    most epsilon) to raise the loss of its true label: robustness to an attack of that size."""
    was_training = model.training
    model.eval()
    correct = 0
    embedding = _embedding_of(model)
    try:
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in task.collate(examples[i:i + batch_size]).items()}
            with perturbed(embedding) as hook:
                delta = attack(lambda: model(batch)["loss"], hook, method, epsilon, steps, alpha)
                hook.delta = delta
                with torch.no_grad():
                    pred = model(batch)["logits"].argmax(-1)
            correct += int((pred == batch["labels"]).sum())
    finally:
        model.train(was_training)
    return correct / len(examples)


def _embedding_of(model: nn.Module) -> nn.Embedding:
    from fastlm.tasks.backbone import input_embedding

    return input_embedding(model)
