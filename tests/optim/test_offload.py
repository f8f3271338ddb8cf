"""OffloadedAdamW with the parameters on the CPU (the device copies become plain copies): training with
it equals training with fastlm.optim.AdamW, gradient accumulation, clipping and unused parameters included."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fastlm.optim import AdamW
from fastlm.optim.offload import OffloadedAdamW


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(13, 37)
        self.norm = nn.LayerNorm(37)
        self.b = nn.Linear(37, 5)
        self.unused = nn.Linear(3, 3)  # never gets a gradient

    def forward(self, x):
        return self.b(torch.tanh(self.norm(self.a(x))))


def _model(dtype=torch.float32, device="cpu"):
    torch.manual_seed(0)
    return Net().to(device=device, dtype=dtype)


def _groups(model):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]


def _train(model, opt, steps, clip, start=0, micro=2, announce=True):
    """`steps` optimizer steps of `micro` accumulated micro-batches each; lr changed every step.
    announce: tell the offload engine which backward is the last (as TrainStep does)."""
    for step in range(start, start + steps):
        gen = torch.Generator().manual_seed(step)
        for k in range(micro):
            if announce and isinstance(opt, OffloadedAdamW):
                opt.final_backward(k == micro - 1)
            p = next(model.parameters())
            x = torch.randn(8, 13, generator=gen).to(device=p.device, dtype=p.dtype)
            (model(x).float().pow(2).mean() * 10 / micro).backward()
        for g in opt.param_groups:
            g["lr"] = 1e-2 * (1 + step % 3)
        if clip:
            if isinstance(opt, OffloadedAdamW):
                opt.clip_grad_norm_(clip)
            else:
                # in the optimizer's parameter order, as the engine (the norm's sum order)
                params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
                torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("bucket_elems", [1, 300, 1 << 20])
@pytest.mark.parametrize("clip", [0.0, 0.05])
@pytest.mark.parametrize("announce", [True, False])
def test_offload_equals_plain_adamw(bucket_elems, clip, announce, monkeypatch):
    copies = []
    real = OffloadedAdamW._grad_ready

    def counting(self, i, p):  # counts the gradient copies to the host
        copies.extend([i] if self._copy_grads else [])
        real(self, i, p)

    monkeypatch.setattr(OffloadedAdamW, "_grad_ready", counting)
    plain, offloaded = _model(), _model()
    opt_a = AdamW(_groups(plain), lr=1e-2, betas=(0.9, 0.95))
    opt_b = OffloadedAdamW(_groups(offloaded), lr=1e-2, betas=(0.9, 0.95), bucket_elems=bucket_elems)
    assert len(opt_b.buckets) > 1 or bucket_elems > 1000
    _train(plain, opt_a, 6, clip)
    _train(offloaded, opt_b, 6, clip, announce=announce)
    used = len(opt_b.params) - 2  # the unused layer's weight and bias never get a gradient
    assert len(copies) == 6 * used * (1 if announce else 2)
    for (name, p), q in zip(plain.named_parameters(), offloaded.parameters()):
        assert torch.equal(p, q), name
    assert torch.equal(offloaded.unused.weight, _model().unused.weight)  # no gradient: never stepped
    opt_b.close()


def test_offload_equals_torch_adamw_to_float_tolerance():
    plain, offloaded = _model(), _model()
    opt_a = torch.optim.AdamW(_groups(plain), lr=1e-2, foreach=False)
    opt_b = OffloadedAdamW(_groups(offloaded), lr=1e-2, bucket_elems=300)
    _train(plain, opt_a, 6, 0.05)
    _train(offloaded, opt_b, 6, 0.05)
    for p, q in zip(plain.parameters(), offloaded.parameters()):
        torch.testing.assert_close(p, q, rtol=2e-5, atol=2e-6)


def test_offload_bf16_params_keep_fp32_masters():
    plain, offloaded = _model(torch.bfloat16), _model(torch.bfloat16)
    opt_a = AdamW(_groups(plain), lr=1e-2)
    opt_b = OffloadedAdamW(_groups(offloaded), lr=1e-2, bucket_elems=300)
    _train(plain, opt_a, 5, 0.0)
    _train(offloaded, opt_b, 5, 0.0)
    for p, q in zip(plain.parameters(), offloaded.parameters()):
        assert torch.equal(p, q)
    state = opt_b.state_dict()["state"]
    for i, p in enumerate(q for g in opt_a.param_groups for q in g["params"]):
        assert torch.equal(state[i]["master"], opt_a.state[p]["master"]) if p in opt_a.state else i not in state


def test_offload_state_dict_resume_is_exact():
    straight = _model()
    opt = OffloadedAdamW(_groups(straight), lr=1e-2, bucket_elems=300)
    _train(straight, opt, 3, 0.05)
    saved_weights = {k: v.clone() for k, v in straight.state_dict().items()}
    saved = copy.deepcopy(opt.state_dict())  # as written to disk (state_dict() shares the live tensors)
    _train(straight, opt, 3, 0.05, start=3)

    resumed = _model()  # built fresh, as a resumed run: weights loaded after the optimizer exists
    opt2 = OffloadedAdamW(_groups(resumed), lr=1e-2, bucket_elems=300)
    resumed.load_state_dict(saved_weights)
    opt2.load_state_dict(saved)
    _train(resumed, opt2, 3, 0.05, start=3)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_offload_refuses_mixed_devices_and_dtypes():
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        OffloadedAdamW([nn.Parameter(torch.zeros(2, dtype=torch.float16))])
