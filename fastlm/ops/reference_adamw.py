"""Plain-torch reference of adamw_step_: torch.optim.AdamW's single-tensor math, per tensor, fp32.

bf16 parameters (masters[i] non-empty) are stepped through their fp32 master and rewritten as the
master rounded to bf16; fp32 parameters are stepped in place.
"""
from __future__ import annotations

import math

import torch


def adamw_step_(params, grads, exp_avgs, exp_avg_sqs, masters, steps, lr, beta1, beta2, eps, weight_decay) -> None:
    for p, g, m, v, master, step in zip(params, grads, exp_avgs, exp_avg_sqs, masters, steps):
        step.add_(1)
        step = step.item()
        w = master if (master.numel() > 0 or p.dtype != torch.float32) else p
        g = g.reshape(w.shape).to(torch.float32)
        w.mul_(1.0 - lr * weight_decay)
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        step_size = lr / (1.0 - beta1 ** step)
        denom = (v.sqrt() / math.sqrt(1.0 - beta2 ** step)).add_(eps)
        w.addcdiv_(m, denom, value=-step_size)
        if w is not p:
            p.copy_(w.reshape(p.shape))
