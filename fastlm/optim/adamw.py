"""AdamW whose step is one fused native call per parameter group and device.

A drop-in for torch.optim.AdamW (same constructor, same state_dict layout: per parameter "step",
"exp_avg", "exp_avg_sq"; state dicts load both ways). bf16 parameters are stepped through an fp32
master copy kept in the optimizer state ("master"); the bf16 parameter is the rounded master, and
exp_avg / exp_avg_sq stay fp32. The math is torch's single-tensor AdamW in fp32
(fastlm/ops/reference_adamw.py); the kernels are fastlm/ops/adamw.py's.
"""
from __future__ import annotations

from itertools import chain
from typing import Any

import torch

from fastlm.ops.adamw import adamw_step

_PARAM_DTYPES = (torch.float32, torch.bfloat16)


class AdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None) -> None:
        # foreach / fused are accepted for torch's signature (this step is always one fused call).
        if isinstance(lr, torch.Tensor) or any(isinstance(b, torch.Tensor) for b in betas):
            raise ValueError("fastlm.optim.AdamW: lr and betas must be Python floats, not tensors")
        if not 0.0 <= lr:
            raise ValueError(f"fastlm.optim.AdamW: invalid learning rate {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"fastlm.optim.AdamW: invalid eps {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"fastlm.optim.AdamW: invalid betas {betas} (each in [0, 1))")
        if not 0.0 <= weight_decay:
            raise ValueError(f"fastlm.optim.AdamW: invalid weight_decay {weight_decay}")
        for name, value in (("amsgrad", amsgrad), ("maximize", maximize), ("capturable", capturable),
                            ("differentiable", differentiable)):
            if value:
                raise ValueError(f"fastlm.optim.AdamW: {name}=True is not supported (use torch.optim.AdamW)")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=False,
                        maximize=False, foreach=foreach, capturable=False, differentiable=False, fused=fused,
                        decoupled_weight_decay=True)
        super().__init__(params, defaults)

    def _state_of(self, p: torch.Tensor) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            if p.dtype not in _PARAM_DTYPES:
                raise TypeError(f"fastlm.optim.AdamW: parameters must be float32 or bfloat16, got {p.dtype}")
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            state["exp_avg_sq"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            if p.dtype != torch.float32:
                state["master"] = p.detach().to(torch.float32, copy=True)
        elif p.dtype != torch.float32 and "master" not in state:  # loaded from torch.optim.AdamW
            state["master"] = p.detach().to(torch.float32, copy=True)
        return state

    def _empty(self, device: torch.device) -> torch.Tensor:
        """The "no master" placeholder of fp32 parameters (one per device)."""
        cache = self.__dict__.setdefault("_no_master", {})
        if device not in cache:
            cache[device] = torch.empty(0, dtype=torch.float32, device=device)
        return cache[device]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group, group["params"])
        return loss

    @torch.no_grad()
    def step_params(self, params) -> None:
        """Steps only `params` (those with a gradient), each with its group's hyperparameters: the
        offload engine (fastlm.optim.offload) steps bucket by bucket."""
        wanted = {id(p) for p in params}
        for group in self.param_groups:
            chosen = [p for p in group["params"] if id(p) in wanted]
            if chosen:
                self._step_group(group, chosen)

    def _step_group(self, group: dict[str, Any], params) -> None:
        if group.get("amsgrad") or group.get("maximize"):
            raise ValueError("fastlm.optim.AdamW: amsgrad and maximize are not supported (use torch.optim.AdamW)")
        lists: dict[torch.device, tuple[list, ...]] = {}
        for p in params:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("fastlm.optim.AdamW does not support sparse gradients")
            if not p.is_contiguous():
                raise ValueError(f"fastlm.optim.AdamW: parameters must be contiguous (shape {tuple(p.shape)})")
            state = self._state_of(p)
            ps, gs, ms, vs, ws, steps = lists.setdefault(p.device, ([], [], [], [], [], []))
            ps.append(p)
            gs.append(p.grad.contiguous())
            ms.append(state["exp_avg"])
            vs.append(state["exp_avg_sq"])
            ws.append(state.get("master", self._empty(p.device)))
            steps.append(state["step"])
        beta1, beta2 = group["betas"]
        for ps, gs, ms, vs, ws, steps in lists.values():
            adamw_step(ps, gs, ms, vs, ws, steps, lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                       weight_decay=group["weight_decay"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, except that the moments and masters of bf16 parameters stay fp32 (torch would cast
        every floating state to the parameter's dtype), and every "step" becomes a 0-d fp32 CPU tensor
        (what the native step counts in; torch's fused / capturable states keep it on the device)."""
        super().load_state_dict(state_dict)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id)
            if saved is None:
                continue
            state = self.state[p]
            if "step" in state:
                state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32)
            if p.dtype != torch.float32:
                for key in ("exp_avg", "exp_avg_sq", "master"):
                    if key in saved:
                        state[key] = saved[key].to(device=p.device, dtype=torch.float32, copy=True)
