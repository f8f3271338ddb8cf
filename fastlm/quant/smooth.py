"""SmoothQuant-style smoothing: move activation outliers into the weights before w8a8 quantization.

For a linear y = x W^T with per-input-channel factors s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha),
y = (x / s) (W s)^T: the activation channels with outliers shrink, the weight columns grow, and both
quantize with a smaller error. max|x_j| comes from calibration batches (forward hooks).

Where the linear's input is the output of a norm (LayerNorm / RMSNorm weight and bias are per channel)
that feeds only linears being quantized, 1/s is folded into the norm and costs nothing at run time;
otherwise the Int8Linear keeps s and divides its input by it. Linears reading the same norm output
(q, k, v of one attention) share one s, computed over all their weights.
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import nn

from fastlm.nn.norms import LayerNorm, RMSNorm

NORMS: tuple[type, ...] = (LayerNorm, RMSNorm, nn.LayerNorm) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
MIN_FACTOR = 1e-5


def check_alpha(alpha) -> float | None:
    if alpha is None:
        return None
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) \
            or not 0 <= alpha <= 1:
        raise ValueError(f"smooth = {alpha!r}: expected a migration strength alpha in [0, 1] (e.g. 0.5), or None")
    return float(alpha)


class _Recorder:
    """Forward hooks: per-channel input absmax of the linears, and which norm output each linear reads."""

    def __init__(self, model: nn.Module, targets: dict[str, nn.Linear]):
        self.targets = targets
        self.act_max: dict[str, torch.Tensor] = {}
        self.fed_by: dict[str, set] = defaultdict(set)    # linear name -> norm names (None: not a norm)
        self._norm_outputs: dict[int, tuple[str, torch.Tensor]] = {}
        self._handles = []
        for name, module in model.named_modules():
            if isinstance(module, NORMS):
                self._handles.append(module.register_forward_hook(self._norm_hook(name)))
            elif isinstance(module, nn.Linear):  # also the skipped ones: their norm must not be folded
                self._handles.append(module.register_forward_pre_hook(self._linear_hook(name)))

    def _norm_hook(self, name):
        def hook(module, args, output):
            self._norm_outputs[id(output)] = (name, output)  # the tensor is kept, so its id stays unique
        return hook

    def _linear_hook(self, name):
        def hook(module, args):
            x = args[0]
            source = self._norm_outputs.get(id(x))
            self.fed_by[name].add(source[0] if source is not None and source[1] is x else None)
            if name in self.targets:
                m = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0).float()
                self.act_max[name] = m if name not in self.act_max else torch.maximum(self.act_max[name], m)
        return hook

    def end_batch(self):
        self._norm_outputs.clear()

    def remove(self):
        for h in self._handles:
            h.remove()


def forward_batch(model: nn.Module, batch) -> None:
    """Run one batch: a tensor of input ids, a tuple of positional args, or a dict of keyword args
    (tensors are moved to the model's device)."""
    device = next((p.device for p in model.parameters()), None)
    move = (lambda v: v.to(device) if isinstance(v, torch.Tensor) and device is not None else v)  # noqa: E731
    if isinstance(batch, dict):
        model(**{k: move(v) for k, v in batch.items()})
    elif isinstance(batch, (tuple, list)):
        model(*map(move, batch))
    else:
        model(move(batch))


@torch.no_grad()
def smooth_linears(model: nn.Module, linears: list[tuple[str, nn.Linear]], batches, alpha: float
                   ) -> dict[str, tuple[torch.Tensor, bool]]:
    """Calibrate on `batches` and fold what can be folded into norms.

    Returns {linear name: (s, folded)}: the linear's weight must be multiplied by s; when not folded
    its input must also be divided by s at run time. Norm weights are changed in place.
    """
    if batches is None:
        raise ValueError("smoothing needs calibration_batches (a few batches of model inputs)")
    targets = dict(linears)
    recorder = _Recorder(model, targets)
    was_training = model.training
    model.eval()
    try:
        seen = 0
        for batch in batches:
            forward_batch(model, batch)
            recorder.end_batch()
            seen += 1
    finally:
        recorder.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("calibration_batches is empty: smoothing needs at least one batch")
    missing = [n for n in targets if n not in recorder.act_max]
    if missing:
        raise ValueError(f"calibration did not run the linear(s) {', '.join(missing[:5])}: "
                         f"the calibration batches must go through the whole model")

    # Group the linears by the norm whose output they read (one group per linear otherwise).
    readers: dict[str, list[str]] = defaultdict(list)
    for name, sources in recorder.fed_by.items():
        for source in sources:
            if source is not None:
                readers[source].append(name)
    groups: list[tuple[str | None, list[str]]] = []
    grouped = set()
    for norm_name, names in readers.items():
        foldable = all(n in targets and recorder.fed_by[n] == {norm_name} for n in names)
        if foldable:
            groups.append((norm_name, names))
            grouped.update(names)
    groups += [(None, [n]) for n in targets if n not in grouped]

    result = {}
    for norm_name, names in groups:
        act_max = torch.stack([recorder.act_max[n] for n in names]).amax(dim=0)
        w_max = torch.stack([targets[n].weight.detach().abs().amax(dim=0).float().to(act_max.device)
                             for n in names]).amax(dim=0)
        s = act_max.clamp(min=MIN_FACTOR).pow(alpha) / w_max.clamp(min=MIN_FACTOR).pow(1 - alpha)
        s = s.clamp(min=MIN_FACTOR)
        if norm_name is not None:
            norm = model.get_submodule(norm_name)
            norm.weight.div_(s.to(norm.weight))
            if getattr(norm, "bias", None) is not None:
                norm.bias.div_(s.to(norm.bias))
        for n in names:
            result[n] = (s, norm_name is not None)
    return result
