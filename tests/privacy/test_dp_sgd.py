"""DP-SGD's clipped gradient sum on whole models: equal to a per-sample loop in float64 (every layer
type fastlm's models use, tied weights, padding, packed documents), equal to Opacus with no noise;
the noise, the Python API, and the accounting against Opacus' accountants."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fastlm.models import GPT, GPTConfig
from fastlm.models.encoder import EncoderForMaskedLM
from fastlm.models.encoder_config import EncoderConfig
from fastlm.privacy import apply_dp_sgd, make_private
from fastlm.privacy.accounting import calibrate_noise, epsilon, steps_within
from fastlm.privacy.engine import DPSGD
from fastlm.privacy.layers import recording
from fastlm.privacy.recorder import Recorder


def _clipped_sum_loop(model, loss_of_row, batch_size: int, max_norm: float) -> dict[str, torch.Tensor]:
    """sum_b clip(grad_b) with every sample's gradient computed alone (loss_of_row(b) is sample b's
    share of the mean loss, times the batch size: Opacus' convention for a mean-reduced loss)."""
    per_sample = []
    for b in range(batch_size):
        model.zero_grad()
        loss_of_row(b).backward()
        per_sample.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    norms = torch.stack([torch.sqrt(sum(g.pow(2).sum() for g in d.values())) for d in per_sample])
    clip = (max_norm / (norms + 1e-6)).clamp(max=1)
    return {n: sum(clip[b] * per_sample[b][n] for b in range(batch_size)) for n in per_sample[0]}, norms


def _dp_sum(model, loss, batch_size: int, max_norm: float, mask=None):
    """The same through fastlm.privacy (noise 0, expected batch size 1: the plain clipped sum)."""
    dp_model = apply_dp_sgd(copy.deepcopy(model))
    engine = DPSGD(dp_model, max_grad_norm=max_norm, noise_multiplier=0.0, expected_batch_size=1)
    rec = Recorder(batch_size, "cpu", mask)
    with recording(rec):
        out = loss(dp_model)
    out.backward()
    engine.add_clipped(rec)
    return {n: p.grad for n, p in dp_model.named_parameters()}, engine.last_norms


def _assert_same(ours, ref, rtol=1e-9, atol=1e-12):
    assert set(ref) <= set(ours)
    for name, g in ref.items():
        torch.testing.assert_close(ours[name], g, rtol=rtol, atol=atol, msg=name)


def _gpt_targets(labels, cu_seqlens=None):
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)
    if cu_seqlens is not None:
        targets = targets.flatten().index_fill(0, (cu_seqlens[1:] - 1).long(), -100).view_as(targets)
    return targets


def _row_only(labels, b):
    keep = torch.full_like(labels, -100)
    keep[b] = labels[b]
    return keep


@pytest.mark.parametrize("family,tie,packed", [("llama", False, False), ("gpt2", True, False),
                                               ("gpt2", True, True), ("llama", True, True)])
def test_gpt_clipped_sum_equals_per_sample_loop(family, tie, packed):
    torch.manual_seed(0)
    cfg = GPTConfig(family=family, n_layer=2, n_head=2, n_kv_head=1 if family == "llama" else None, d_model=12,
                    vocab_size=29, max_seq_len=16, tie_embeddings=tie)
    model = GPT(cfg).double()
    B, T = 3, 9
    ids = torch.randint(0, 29, (B, T))
    labels = ids.clone()
    labels[1, 4:] = -100  # padding: those tokens count for nobody
    cu = torch.tensor([0, 4, 9, 13, 18, 27], dtype=torch.int32) if packed else None  # documents within rows
    n_counted = (_gpt_targets(labels, cu) != -100).sum(1)
    N = n_counted.sum()

    def row_loss(b):  # sample b's tokens alone, scaled to the batch mean's share times B
        return model(ids, labels=_row_only(labels, b), cu_seqlens=cu, return_logits=False)[1] * n_counted[b] * B / N

    ref, norms = _clipped_sum_loop(model, row_loss, B, max_norm=0.5)
    ours, our_norms = _dp_sum(model, lambda m: m(ids, labels=labels, cu_seqlens=cu, return_logits=False)[1], B, 0.5)
    torch.testing.assert_close(our_norms, norms)
    _assert_same(ours, ref)


@pytest.mark.parametrize("family", ["bert", "albert"])  # ALBERT: one block's weights used by every layer
def test_encoder_with_tied_decoder_and_padding_equals_per_sample_loop(family):
    torch.manual_seed(1)
    cfg = EncoderConfig(family=family, vocab_size=31, d_model=12, n_layer=2, n_head=2, d_ff=20, max_seq_len=16)
    model = EncoderForMaskedLM(cfg).double()
    B, T = 4, 7
    ids = torch.randint(5, 31, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[2, 5:] = 0
    labels = torch.where(torch.rand(B, T) < 0.4, ids, torch.full_like(ids, -100))
    labels[:, 0] = ids[:, 0]  # every sample counts at least one token
    labels[2, 5:] = -100
    n_counted = (labels != -100).sum(1)
    N = n_counted.sum()

    def row_loss(b):
        return model(ids, attention_mask=mask, labels=_row_only(labels, b))[1] * n_counted[b] * B / N

    ref, norms = _clipped_sum_loop(model, row_loss, B, max_norm=1.0)
    ours, our_norms = _dp_sum(model, lambda m: m(ids, attention_mask=mask, labels=labels)[1], B, 1.0, mask)
    torch.testing.assert_close(our_norms, norms)
    _assert_same(ours, ref)


def test_classifier_with_torch_linear_head_equals_per_sample_loop():
    from fastlm.tasks.classification import SequenceClassifier

    torch.manual_seed(2)
    body = GPT(GPTConfig(family="llama", n_layer=1, n_head=2, n_kv_head=2, d_model=8, vocab_size=23, max_seq_len=12))
    model = SequenceClassifier(body, num_labels=3).double()
    B = 5
    batch = {"input_ids": torch.randint(0, 23, (B, 6)), "attention_mask": torch.ones(B, 6, dtype=torch.long),
             "labels": torch.randint(0, 3, (B,))}
    batch["attention_mask"][1, 3:] = 0
    ref, norms = _clipped_sum_loop(model, lambda b: model({k: v[b:b + 1] for k, v in batch.items()})["loss"], B, 0.3)
    ours, our_norms = _dp_sum(model, lambda m: m(batch)["loss"], B, 0.3, batch["attention_mask"])
    torch.testing.assert_close(our_norms, norms)
    _assert_same(ours, ref, rtol=1e-6, atol=1e-8)  # the task computes its loss in fp32


def test_a_layer_without_a_rule_is_refused_by_name():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LSTM(4, 4))
    with pytest.raises(ValueError, match=r"1\.weight_ih_l0 \(LSTM\)"):
        apply_dp_sgd(model)


class _TorchNet(torch.nn.Module):
    """Embedding -> LayerNorm -> Linear -> tanh -> Linear, mean over tokens: every layer Opacus knows."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(17, 6)
        self.norm = torch.nn.LayerNorm(6)
        self.fc = torch.nn.Linear(6, 10)
        self.out = torch.nn.Linear(10, 3)

    def forward(self, ids):
        return self.out(torch.tanh(self.fc(self.norm(self.emb(ids))))).mean(1)


def test_equals_opacus_without_noise():
    opacus = pytest.importorskip("opacus")
    torch.manual_seed(3)
    net = _TorchNet()
    ids, y = torch.randint(0, 17, (6, 5)), torch.randint(0, 3, (6,))
    theirs = opacus.GradSampleModule(copy.deepcopy(net))
    opt = opacus.optimizers.DPOptimizer(torch.optim.SGD(theirs.parameters(), lr=0.1), noise_multiplier=0.0,
                                        max_grad_norm=0.7, expected_batch_size=6)
    F.cross_entropy(theirs(ids), y).backward()
    opt.pre_step()  # clip, sum, (no) noise, divide by the expected batch size: into p.grad
    mine = copy.deepcopy(net)
    mine, popt = make_private(mine, torch.optim.SGD(mine.parameters(), lr=0.1), noise_multiplier=0.0,
                              max_grad_norm=0.7, expected_batch_size=6)
    F.cross_entropy(mine(ids), y).backward()
    popt.clip_pending()
    popt.engine.add_noise()
    reference = dict(theirs._module.named_parameters())
    for name, p in mine.named_parameters():
        torch.testing.assert_close(p.grad, reference[name].grad, rtol=1e-5, atol=1e-7, msg=name)


def test_make_private_noise_and_accumulation():
    torch.manual_seed(4)
    net = _TorchNet()
    ids, y = torch.randint(0, 17, (8, 5)), torch.randint(0, 3, (8,))

    def grads(noise, split, seed=0):
        m = copy.deepcopy(net)
        m, popt = make_private(m, torch.optim.SGD(m.parameters(), lr=0.0), noise_multiplier=noise, max_grad_norm=0.5,
                               expected_batch_size=8, seed=seed)
        for i, j in zip(ids.split(split), y.split(split)):  # gradient accumulation over micro-batches
            F.cross_entropy(m(i), j).backward()  # each micro-batch's mean loss (as with Opacus)
        popt.step()
        return torch.cat([p.grad.flatten() for p in m.parameters()])

    # accumulation: the clipped sum does not depend on how the samples are grouped into micro-batches
    whole = grads(0.0, 8)
    assert whole.abs().sum() > 0
    torch.testing.assert_close(grads(0.0, 3), whole)
    noisy, again, other_seed = grads(2.0, 8), grads(2.0, 8), grads(2.0, 8, seed=1)
    torch.testing.assert_close(noisy, again)  # seeded: the same on every rank and rerun
    assert not torch.allclose(noisy, other_seed)
    std = 2.0 * 0.5 / 8
    assert (noisy - whole).std().item() == pytest.approx(std, rel=0.15)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_equals_opacus_accountant(accountant):
    from opacus.accountants import PRVAccountant, RDPAccountant

    from fastlm.privacy.accounting import RDP_ALPHAS

    sigma, q, steps, delta = 1.1, 0.01, 500, 1e-5
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    theirs = acc.get_epsilon(delta, alphas=RDP_ALPHAS) if accountant == "rdp" else acc.get_epsilon(delta)
    ours = epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant=accountant)
    assert ours == pytest.approx(theirs, rel=1e-3 if accountant == "prv" else 1e-9)
    assert 0.5 < ours < 5


def test_calibrated_noise_meets_the_target_and_the_budget_stop():
    q, steps, delta = 0.02, 300, 1e-5
    sigma = calibrate_noise(target_epsilon=4.0, sample_rate=q, steps=steps, delta=delta)
    eps = epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta)
    assert 3.9 <= eps <= 4.0
    last = steps_within(4.0, noise_multiplier=sigma * 0.9, sample_rate=q, delta=delta, accountant="rdp", limit=steps)
    assert 0 < last < steps
    assert epsilon(noise_multiplier=sigma * 0.9, sample_rate=q, steps=last, delta=delta) <= 4.0
    assert epsilon(noise_multiplier=sigma * 0.9, sample_rate=q, steps=last + 1, delta=delta) > 4.0
