"""DP-SGD for other trainers: make a model and its optimizer private, then train as usual.

    model, optimizer = fastlm.privacy.make_private(model, optimizer, noise_multiplier=1.0,
                                                   max_grad_norm=1.0, expected_batch_size=256)
    for batch in batches:                     # Poisson-sampled batches of expected size 256
        loss = loss_fn(model(batch))          # the batch's mean loss (loss_reduction="mean")
        loss.backward()                       # no weight gradient is computed here
        optimizer.step()                      # clip every sample's gradient, add the noise, step
        optimizer.zero_grad()

Each forward in training mode (with gradients enabled) records one micro-batch; its samples are
clipped when the next forward starts or at optimizer.step(), so gradient accumulation over several
forward/backward pairs works as it does without DP. The number of samples of a micro-batch is the
number of rows of the forward's first tensor argument (or of batch["input_ids"]).
"""
from __future__ import annotations

import torch
from torch import nn

from fastlm.privacy.engine import DPSGD, attention_mask_of, batch_size_of
from fastlm.privacy.layers import _ACTIVE, apply_dp_sgd
from fastlm.privacy.recorder import Recorder


class PrivateOptimizer:
    """The wrapped optimizer: step() clips what the forwards recorded, adds the noise once, then steps."""

    def __init__(self, optimizer: torch.optim.Optimizer, engine: DPSGD):
        self.optimizer, self.engine = optimizer, engine
        self.pending: list[Recorder] = []

    def clip_pending(self) -> None:
        for rec in self.pending:
            self.engine.add_clipped(rec)
        self.pending.clear()

    def step(self, closure=None):
        self.clip_pending()
        self.engine.add_noise()
        return self.optimizer.step(closure) if closure is not None else self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.pending.clear()
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name):  # param_groups, state, state_dict(), ...
        return getattr(self.optimizer, name)


def make_private(model: nn.Module, optimizer: torch.optim.Optimizer, *, noise_multiplier: float,
                 max_grad_norm: float, expected_batch_size: int, loss_reduction: str = "mean", seed: int = 0,
                 world_size: int = 1) -> tuple[nn.Module, PrivateOptimizer]:
    """(the model, its layers swapped for their DP variants in place; the private optimizer).

    world_size: the number of data-parallel processes when the model is wrapped by a data-parallel
    wrapper that averages gradients (torch DDP, fastlm.parallel.DataParallel): each rank's clipped
    sum is scaled so the average is the global sum over expected_batch_size, and the noise, drawn
    from (seed, step), is the same on every rank."""
    apply_dp_sgd(model)
    engine = DPSGD(model, max_grad_norm=max_grad_norm, noise_multiplier=noise_multiplier,
                   expected_batch_size=expected_batch_size, loss_reduction=loss_reduction, seed=seed,
                   world_size=world_size)
    private = PrivateOptimizer(optimizer, engine)
    device = engine.params[0].device
    started: list[Recorder] = []

    def before_forward(module, args, kwargs):
        if not (module.training and torch.is_grad_enabled()):
            return
        private.clip_pending()  # the previous micro-batch's backward is done
        batch = args[0] if args else next(iter(kwargs.values()), None)
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 and isinstance(batch, torch.Tensor) else None)
        rec = Recorder(batch_size_of(batch), device, mask if mask is not None else attention_mask_of(batch))
        _ACTIVE.append(rec)
        started.append(rec)

    def after_forward(module, args, kwargs, output):
        if started:
            rec = started.pop()
            _ACTIVE.remove(rec)
            private.pending.append(rec)

    model.register_forward_pre_hook(before_forward, with_kwargs=True)
    model.register_forward_hook(after_forward, with_kwargs=True, always_call=True)
    return model, private
