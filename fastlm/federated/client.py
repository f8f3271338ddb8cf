"""A client's part of a round: start from the global model, take `local_steps` TrainStep steps on its own
batches, and hand back its update (local weights - global weights).

The local steps are the library's one training step (fastlm.train.step.TrainStep) with sync=False: no
gradient communication, whatever the process layout. FedProx adds the gradient of its proximal term
(mu / 2) * ||w - w_global||^2 through TrainStep's after_grad_sync hook.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from fastlm.federated.partition import ClientData
from fastlm.train.optim import set_lr


def flat_parameters(params: list[torch.Tensor]) -> torch.Tensor:
    """The parameters as one fp32 vector (a copy)."""
    return torch.cat([p.detach().reshape(-1).float() for p in params])


@torch.no_grad()
def load_flat(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    """Copy a vector from flat_parameters back into the parameters (in place: wrappers keep their references)."""
    offset = 0
    for p in params:
        p.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()
    if offset != flat.numel():
        raise ValueError(f"a vector of {flat.numel()} values for {offset} parameter values")


class Proximal:
    """FedProx's term: after the gradients are computed, grad += mu * (w - w_global)."""

    def __init__(self, params: list[torch.Tensor], mu: float):
        self.params, self.mu = params, mu
        self.anchor: list[torch.Tensor] | None = None  # the round's global weights

    def set_anchor(self, global_flat: torch.Tensor) -> None:
        self.anchor, offset = [], 0
        for p in self.params:
            self.anchor.append(global_flat[offset:offset + p.numel()].view_as(p).to(p.dtype))
            offset += p.numel()

    @torch.no_grad()
    def __call__(self) -> None:
        if self.anchor is None or not self.mu:
            return
        for p, w0 in zip(self.params, self.anchor):
            if p.grad is not None:
                p.grad.add_(p.detach() - w0, alpha=self.mu)


class OptimizerStates:
    """client_state = "keep": each client's optimizer state, kept (on the CPU) across its rounds;
    "reset": every round starts from a fresh state, as plain FedAvg does."""

    def __init__(self, keep: bool):
        self.keep = keep
        self.saved: dict[int, dict] = {}

    def load(self, optimizer: torch.optim.Optimizer, client: int) -> None:
        optimizer.state.clear()
        if self.keep and client in self.saved:
            optimizer.load_state_dict(self.saved[client])  # casts the state back to the parameters' device

    def save(self, optimizer: torch.optim.Optimizer, client: int) -> None:
        if self.keep:
            state = copy.deepcopy(optimizer.state_dict())
            for per_param in state["state"].values():
                for key, value in per_param.items():
                    if torch.is_tensor(value):
                        per_param[key] = value.cpu()
            self.saved[client] = state


def train_client(step, data: ClientData, states: OptimizerStates, *, first_step: int, local_steps: int,
                 lr_of: Callable[[int], float], client_steps: dict[int, int]) -> torch.Tensor:
    """Run one client's local steps from the weights the model holds; returns the mean training loss.

    first_step: the schedule position of the round's first local step (lr_of(first_step + j));
    client_steps[client]: how many local steps the client has taken, so its batches go on through its data.
    """
    states.load(step.optimizer, data.client)
    losses = []
    for j in range(local_steps):
        set_lr(step.optimizer, lr_of(first_step + j))
        out = step(data.batch(client_steps.get(data.client, 0)), sync=False)
        client_steps[data.client] = client_steps.get(data.client, 0) + 1
        losses.append(out.loss)
    states.save(step.optimizer, data.client)
    return torch.stack(losses).mean()
