"""fastlm.ops.linear_distill_loss against the float64 definition (full logits), every loss and option."""
import pytest
import torch
import torch.nn.functional as F

import fastlm.ops as ops
from fastlm.ops import reference_distill as reference

from .accuracy import assert_as_accurate, plain_torch

LOSSES = ("kl", "reverse_kl", "jsd")


def _inputs(n, d, v, dtype, teacher_scale=2.0):
    hidden = torch.randn(n, d).to(dtype).requires_grad_()
    weight = (torch.randn(v, d) / d ** 0.5).to(dtype).requires_grad_()
    teacher = (torch.randn(n, v) * teacher_scale).to(dtype)
    return hidden, weight, teacher


def _oracle(mask, reduction="mean", **kw):
    def fn(h, w):
        per_row = reference.linear_distill_loss(h, w, mask=mask, **kw)
        if reduction == "none":
            return per_row
        return per_row.sum() if reduction == "sum" else per_row.sum() / mask.sum()
    return fn


def _assert_as_accurate_as_plain(call, oracle, hidden, weight, upstream=None):
    loss = call()
    h64, w64 = (t.detach().double().requires_grad_() for t in (hidden, weight))
    want = oracle(h64, w64)
    with plain_torch():
        plain = call()
    up = torch.ones_like(loss) if upstream is None else upstream
    assert_as_accurate("loss", loss, want, plain)
    got, base = (torch.autograd.grad(t, (hidden, weight), up) for t in (loss, plain))
    grads64 = torch.autograd.grad(want, (h64, w64), up.double())
    for name, g, r, p in zip(("grad hidden", "grad weight"), got, grads64, base):
        assert_as_accurate(name, g, r, p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(37, 16, 50, 8), (19, 8, 1001, 16), (5, 8, 13, 100)])  # N, d, V, chunk
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("top_k,temperature", [(0, 1.0), (7, 1.0), (0, 2.5), (3, 0.7)])
def test_vs_definition(dtype, shape, loss, top_k, temperature):
    n, d, v, chunk = shape
    hidden, weight, teacher = _inputs(n, d, v, dtype)
    labels = torch.randint(0, v, (n,))
    labels[::6] = -100
    kw = dict(loss=loss, top_k=top_k, temperature=temperature, beta=0.3)
    call = lambda: ops.linear_distill_loss(hidden, weight, teacher, labels=labels, chunk_size=chunk, **kw)  # noqa
    _assert_as_accurate_as_plain(call, _oracle(labels != -100, teacher_logits=teacher.double(), **kw), hidden, weight)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("top_k", [0, 4])
def test_teacher_hidden_and_head_chunk_by_chunk(loss, top_k):
    hidden, weight, _ = _inputs(23, 12, 37, torch.float32)
    t_hidden, t_weight = torch.randn(23, 20), torch.randn(37, 20) / 3
    call = lambda: ops.linear_distill_loss(hidden, weight, t_hidden, teacher_weight=t_weight, loss=loss,  # noqa
                                           top_k=top_k, temperature=1.5, chunk_size=5)
    mask = torch.ones(23, dtype=torch.bool)
    oracle = _oracle(mask, teacher_hidden=t_hidden.double(), teacher_weight=t_weight.double(), loss=loss,
                     top_k=top_k, temperature=1.5)
    _assert_as_accurate_as_plain(call, oracle, hidden, weight)
    by_keyword = ops.linear_distill_loss(hidden, weight, teacher_hidden=t_hidden, teacher_weight=t_weight,
                                         loss=loss, top_k=top_k, temperature=1.5, chunk_size=7)
    torch.testing.assert_close(by_keyword, call())


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("top_k", [0, 3])
def test_gradcheck_tiny(loss, top_k):
    h = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 9, dtype=torch.float64)
    labels = torch.tensor([1, -100, 2, 3, 4])
    for reduction in ("mean", "none"):
        fn = lambda h, w: ops.linear_distill_loss(h, w, t, loss=loss, top_k=top_k, temperature=1.7,  # noqa
                                                  labels=labels, reduction=reduction, chunk_size=2)
        assert torch.autograd.gradcheck(fn, (h, w))


def test_reduction_none_with_upstream_gradient_and_batch_shape():
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    teacher = torch.randn(2, 9, 40)
    call = lambda: ops.linear_distill_loss(hidden, weight, teacher, loss="jsd", reduction="none", chunk_size=4)  # noqa
    assert call().shape == (2, 9)
    oracle = lambda h, w: reference.linear_distill_loss(h.view(-1, 16), w, teacher.view(-1, 40).double(),  # noqa
                                                        loss="jsd").view(2, 9)
    _assert_as_accurate_as_plain(call, oracle, hidden, weight, upstream=torch.rand(2, 9))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_sum_and_mean_scale_with_upstream_gradient(reduction):
    hidden, weight, teacher = _inputs(11, 8, 30, torch.float32)
    loss = ops.linear_distill_loss(hidden, weight, teacher, reduction=reduction, chunk_size=3)
    g = torch.autograd.grad(3.0 * loss, (hidden, weight))
    want = torch.autograd.grad(3.0 * ops.linear_distill_loss(hidden, weight, teacher, reduction=reduction,
                                                             grads_in_forward=False, chunk_size=3), (hidden, weight))
    for a, b in zip(g, want):
        torch.testing.assert_close(a, b)


def test_definition_matches_torch_kl_div_and_trl_jsd():
    """The oracle itself, against torch's F.kl_div and TRL's generalized_jsd_loss formula."""
    s, t = torch.randn(6, 11, dtype=torch.float64), torch.randn(6, 11, dtype=torch.float64) * 2
    eye = torch.eye(11, dtype=torch.float64)
    T, beta = 2.0, 0.3
    ls, lt = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    kl = F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1) * T * T
    rkl = F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1) * T * T
    mix = torch.logsumexp(torch.stack([ls + torch.log(torch.tensor(1 - beta)), lt + torch.log(torch.tensor(beta))]), 0)
    jsd = (beta * F.kl_div(mix, lt, reduction="none", log_target=True).sum(-1)
           + (1 - beta) * F.kl_div(mix, ls, reduction="none", log_target=True).sum(-1)) * T * T
    for name, want in (("kl", kl), ("reverse_kl", rkl), ("jsd", jsd)):
        got = reference.linear_distill_loss(s, eye, t, loss=name, beta=beta, temperature=T)
        torch.testing.assert_close(got, want)
    # jsd at beta 0 / 1 is forward / reverse KL (TRL's convention)
    torch.testing.assert_close(reference.linear_distill_loss(s, eye, t, loss="jsd", beta=0.0, temperature=T), kl)
    torch.testing.assert_close(reference.linear_distill_loss(s, eye, t, loss="jsd", beta=1.0, temperature=T), rkl)


def test_top_k_bins_hold_the_whole_mass_and_equal_full_when_k_is_v_minus_1():
    s, t = torch.randn(4, 9, dtype=torch.float64), torch.randn(4, 9, dtype=torch.float64)
    lp, index = reference.teacher_top_k(t, 3, 1.3)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(4, dtype=torch.float64))
    eye = torch.eye(9, dtype=torch.float64)
    # k = V - 1: the tail bin is the last token, so the bins are the full distribution
    full = reference.linear_distill_loss(s, eye, t, loss="kl")
    torch.testing.assert_close(reference.linear_distill_loss(s, eye, t, loss="kl", top_k=8), full)


@pytest.mark.parametrize("loss", LOSSES)
def test_offline_top_k_equals_online(loss):
    hidden, weight, teacher = _inputs(17, 8, 33, torch.float32)
    online = ops.linear_distill_loss(hidden, weight, teacher, loss=loss, top_k=5, temperature=2.0, chunk_size=4)
    g_online = torch.autograd.grad(online, (hidden, weight))
    stored = reference.teacher_top_k(teacher, 5, 2.0)
    offline = ops.linear_distill_loss(hidden, weight, teacher_topk=stored, loss=loss, temperature=2.0, chunk_size=6)
    torch.testing.assert_close(offline, online)
    for a, b in zip(torch.autograd.grad(offline, (hidden, weight)), g_online):
        torch.testing.assert_close(a, b)


def test_bad_input_names_the_problem():
    hidden, weight, teacher = _inputs(4, 8, 10, torch.float32)
    with pytest.raises(ValueError, match="loss must be one of"):
        ops.linear_distill_loss(hidden, weight, teacher, loss="mse")
    with pytest.raises(ValueError, match="top_k"):
        ops.linear_distill_loss(hidden, weight, teacher, top_k=10)
    with pytest.raises(ValueError, match="temperature"):
        ops.linear_distill_loss(hidden, weight, teacher, temperature=0)
    with pytest.raises(ValueError, match="exactly one teacher"):
        ops.linear_distill_loss(hidden, weight)
    with pytest.raises(ValueError, match="exactly one teacher"):
        ops.linear_distill_loss(hidden, weight, teacher, teacher_topk=reference.teacher_top_k(teacher, 2, 1.0))
    with pytest.raises(ValueError, match="teacher_logits must be"):
        ops.linear_distill_loss(hidden, weight, teacher[:, :9])
    with pytest.raises(ValueError, match="beta"):
        ops.linear_distill_loss(hidden, weight, teacher, loss="jsd", beta=1.5)


def test_no_full_logits_in_memory():
    """The forward + backward never holds (N, V) logits: peak extra memory ~ one chunk (+ the grads)."""
    n, d, v, chunk = 256, 32, 4096, 16
    hidden, weight, _ = _inputs(n, d, v, torch.float32)
    t_hidden, t_weight = torch.randn(n, d), torch.randn(v, d)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        loss = ops.linear_distill_loss(hidden, weight, t_hidden, teacher_weight=t_weight, chunk_size=chunk)
        loss.backward()
    biggest = max((e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0), default=0)
    assert biggest < n * v * 4 / 4, f"an allocation of {biggest} bytes: the logits are {n * v * 4}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss,beta", [(0, 0.5), (1, 0.5), (2, 0.5), (2, 0.0), (2, 1.0), (2, 0.9)])
@pytest.mark.parametrize("top_k", [0, 1, 6])
def test_row_kernel_vs_reference(dtype, loss, beta, top_k):
    """torch.ops.fastlm.distill_loss (C++ on CPU) against its plain-torch reference in float64, odd V."""
    from .accuracy import assert_like_reference

    n, v, T = 9, 77, 1.3
    s = (torch.randn(n, v) * 3).to(dtype)
    t = torch.randn(n, v) * 3
    g = torch.rand(n)
    if top_k:
        teacher, index = reference.teacher_top_k(t, top_k, T)
    else:
        teacher, index = t.to(dtype), None
    got = torch.ops.fastlm.distill_loss(s, teacher, index, g, loss, beta, T, True)
    assert_like_reference(("loss", "grad"), got, lambda *a: reference.distill_loss(*a, loss, beta, T, True),
                          s, teacher, index, g)
    loss_only, empty = torch.ops.fastlm.distill_loss(s, teacher, index, g, loss, beta, T, False)
    assert empty.numel() == 0 and torch.equal(loss_only, got[0])


def test_backward_twice_with_retained_graph_and_accumulation():
    """The mean's backward hands out the forward's weight gradient: retained graphs and accumulation stay exact."""
    hidden, weight, teacher = _inputs(10, 8, 30, torch.float32)
    loss = ops.linear_distill_loss(hidden, weight, teacher, chunk_size=3)
    want = torch.autograd.grad(ops.linear_distill_loss(hidden, weight, teacher, grads_in_forward=False), weight)[0]
    loss.backward(retain_graph=True)
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(weight.grad, 3 * want)
    torch.testing.assert_close(hidden.grad, 3 * torch.autograd.grad(
        ops.linear_distill_loss(hidden, weight, teacher, grads_in_forward=False), hidden)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("loss,top_k", [("kl", 0), ("jsd", 4), ("reverse_kl", 0)])
def test_hard_label_cross_entropy_in_the_same_pass(dtype, loss, top_k):
    hidden, weight, teacher = _inputs(29, 16, 70, dtype)
    labels = torch.randint(0, 70, (29,))
    labels[::5] = -100
    kw = dict(loss=loss, top_k=top_k, temperature=1.5)
    call = lambda: ops.linear_distill_loss(hidden, weight, teacher, labels=labels, ce_weight=0.4,  # noqa: E731
                                           chunk_size=8, **kw)
    mask = labels != -100

    def oracle(h, w):
        kd = reference.linear_distill_loss(h, w, teacher.double(), mask=mask, **kw)
        ce = F.cross_entropy(h @ w.t(), labels, ignore_index=-100, reduction="none")
        return (kd + 0.4 * ce).sum() / mask.sum()
    _assert_as_accurate_as_plain(call, oracle, hidden, weight)
    with pytest.raises(ValueError, match="needs labels"):
        ops.linear_distill_loss(hidden, weight, teacher, ce_weight=0.4)
