"""fastlm.optim.AdamW against torch.optim.AdamW (single-tensor path) on every forced kernel path."""
from __future__ import annotations

import copy
import io

import pytest
import torch

from fastlm.optim import AdamW
from fastlm.ops._library import has_native_op

SHAPES = [(37, 19), (129,), (3, 5, 7), (1,), (1000, 3), (65, 17)]


def _paths() -> list[str]:
    native = list(torch.ops.fastlm.adamw_cpu_kernels()) if has_native_op("adamw_step_") else []
    return native + ["reference"]


@pytest.fixture(params=_paths())
def path(request, monkeypatch):
    if request.param == "reference":
        monkeypatch.setenv("FASTLM_BACKEND", "reference")
    else:
        monkeypatch.setenv("FASTLM_ADAMW_KERNEL", request.param)
    return request.param


def _params(dtype=torch.float32, seed=0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in SHAPES]


def _groups(params, lr_scale=1.0):
    # three groups: weight decay > 0, weight decay 0, other betas / eps
    return [
        {"params": params[0:2], "weight_decay": 0.1, "lr": 3e-2 * lr_scale},
        {"params": params[2:4], "weight_decay": 0.0, "lr": 1e-2 * lr_scale},
        {"params": params[4:], "weight_decay": 0.05, "betas": (0.8, 0.95), "eps": 1e-6, "lr": 2e-2 * lr_scale},
    ]


def _set_grads(step: int, params_list, dtype) -> None:
    """Same grads for each list of params; param i has no grad on steps where step % 5 == i."""
    gen = torch.Generator().manual_seed(1000 + step)
    for i, s in enumerate(SHAPES):
        g = (torch.randn(s, generator=gen) * (0.1 + i)).to(dtype)
        for params in params_list:
            params[i].grad = None if step % 5 == i else g.to(params[i].device, copy=True)


def _schedule(step: int) -> float:
    return 0.5 + 0.5 * ((step * 7) % 11) / 10  # lr changed between steps


def _run(opt_a, opt_b, params_a, params_b, steps, dtype=torch.float32, start=0):
    for step in range(start, start + steps):
        _set_grads(step, [params_a, params_b], dtype)
        for opt in (opt_a, opt_b):
            for group, base in zip(opt.param_groups, (3e-2, 1e-2, 2e-2)):
                group["lr"] = base * _schedule(step)
            opt.step()


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)


def test_equals_torch_adamw_fp32(path):
    ours, theirs = _params(), _params()
    opt = AdamW(_groups(ours), betas=(0.9, 0.99), weight_decay=0.01)
    ref = torch.optim.AdamW(_groups(theirs), betas=(0.9, 0.99), weight_decay=0.01, foreach=False)
    _run(opt, ref, ours, theirs, steps=60)
    for p, q in zip(ours, theirs):
        _close(p, q)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            _close(opt.state[p][key], ref.state[q][key])
    # params 0-4 had no gradient on 12 of the 60 steps, param 5 always had one
    assert [opt.state[p]["step"].item() for p in ours] == [48] * 5 + [60]


def test_bf16_params_step_an_fp32_master(path):
    ours = _params(torch.bfloat16)
    masters = [p.detach().float().requires_grad_() for p in ours]  # the reference runs on the fp32 masters
    opt = AdamW(_groups(ours))
    ref = torch.optim.AdamW(_groups(masters), foreach=False)
    for step in range(55):
        _set_grads(step, [ours], torch.bfloat16)
        for p, m in zip(ours, masters):
            m.grad = None if p.grad is None else p.grad.float()
        for o in (opt, ref):
            for group, base in zip(o.param_groups, (3e-2, 1e-2, 2e-2)):
                group["lr"] = base * _schedule(step)
            o.step()
    for p, m in zip(ours, masters):
        state = opt.state[p]
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == state["master"].dtype == torch.float32
        _close(state["master"], m)
        assert torch.equal(p, state["master"].to(torch.bfloat16))  # the param is the rounded master


def test_paths_agree_closely(monkeypatch):
    """Every native path gives the same result as the best one (they share the element code)."""
    results = {}
    for name in _paths():
        monkeypatch.delenv("FASTLM_BACKEND", raising=False)
        monkeypatch.delenv("FASTLM_ADAMW_KERNEL", raising=False)
        monkeypatch.setenv(*(("FASTLM_BACKEND", "reference") if name == "reference" else ("FASTLM_ADAMW_KERNEL", name)))
        params = _params()
        opt = AdamW(_groups(params))
        for step in range(20):
            _set_grads(step, [params], torch.float32)
            opt.step()
        results[name] = torch.cat([p.detach().flatten() for p in params])
    base = results.pop(next(iter(results)))
    for name, flat in results.items():
        _close(flat, base)


def test_state_dict_round_trip_is_exact(path):
    a, b = _params(), _params()
    opt_a = AdamW(_groups(a))
    _run(opt_a, AdamW(_groups(_params(seed=9))), a, _params(seed=9), steps=7)
    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)
    buffer.seek(0)
    with torch.no_grad():
        for p, q in zip(a, b):
            q.copy_(p)
    opt_b = AdamW(_groups(b))
    opt_b.load_state_dict(torch.load(buffer, weights_only=True))
    _run(opt_a, opt_b, a, b, steps=8, start=7)
    for p, q in zip(a, b):
        assert torch.equal(p, q)


def test_bf16_state_dict_keeps_fp32_states():
    a = _params(torch.bfloat16)
    opt = AdamW(_groups(a))
    for step in range(3):
        _set_grads(step, [a], torch.bfloat16)
        opt.step()
    b = [p.detach().clone().requires_grad_() for p in a]
    opt_b = AdamW(_groups(b))
    opt_b.load_state_dict(opt.state_dict())
    for p, q in zip(a, b):
        for key in ("exp_avg", "exp_avg_sq", "master"):
            assert opt_b.state[q][key].dtype == torch.float32
            assert torch.equal(opt_b.state[q][key], opt.state[p][key])


def test_loads_a_torch_adamw_state_dict_and_back(path):
    theirs, ours = _params(), _params()
    ref = torch.optim.AdamW(_groups(theirs), foreach=False)
    _run(ref, torch.optim.AdamW(_groups(_params(seed=3))), theirs, _params(seed=3), steps=10)
    with torch.no_grad():
        for p, q in zip(ours, theirs):
            p.copy_(q)
    opt = AdamW(_groups(ours))
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))  # as from disk: torch's loading keeps aliases
    _run(opt, ref, ours, theirs, steps=20, start=10)
    for p, q in zip(ours, theirs):
        _close(p, q)
    # and ours loads into torch's
    back = torch.optim.AdamW(_groups([q.detach().clone().requires_grad_() for q in ours]), foreach=False)
    back.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert back.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])


@pytest.mark.parametrize("kwargs", [{"amsgrad": True}, {"maximize": True}, {"capturable": True}])
def test_unsupported_options_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AdamW(_params(), **kwargs)


def test_unsupported_dtype_and_kernel_name(monkeypatch):
    p = torch.zeros(3, dtype=torch.float16, requires_grad=True)
    p.grad = torch.ones_like(p)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        AdamW([p]).step()
    if has_native_op("adamw_step_"):
        monkeypatch.setenv("FASTLM_ADAMW_KERNEL", "avx9")
        q = torch.zeros(3, requires_grad=True)
        q.grad = torch.ones_like(q)
        with pytest.raises(RuntimeError, match="FASTLM_ADAMW_KERNEL=avx9 is not one of"):
            AdamW([q]).step()


def _train_alone(params, opt, steps=60):
    for step in range(steps):
        _set_grads(step, [params], params[0].dtype)
        for group, base in zip(opt.param_groups, (3e-2, 1e-2, 2e-2)):
            group["lr"] = base * _schedule(step)
        opt.step()
    return params


def test_error_against_an_fp64_oracle_is_within_torchs_own(path):
    """torch's fp32 AdamW and ours both drift from the same AdamW in fp64; ours by no more than torch's."""
    def params(dtype):
        return [p.detach().to(dtype).requires_grad_() for p in _params()]

    oracle = params(torch.float64)
    _train_alone(oracle, torch.optim.AdamW(_groups(oracle), weight_decay=0.01, foreach=False))
    theirs, ours = params(torch.float32), params(torch.float32)
    _train_alone(theirs, torch.optim.AdamW(_groups(theirs), weight_decay=0.01, foreach=False))
    _train_alone(ours, AdamW(_groups(ours), weight_decay=0.01))

    def error(ps):
        return max((p.double() - o).abs().max().item() for p, o in zip(ps, oracle))

    assert 0 < error(ours) <= 1.5 * error(theirs)
