"""GPT's loss without logits (return_logits=False: fused linear cross-entropy) equals the logits path,
also compiled with fullgraph=True; the model's MLP, RoPE and loss run on the fused ops."""
import pytest
import torch
import torch.nn.functional as F

from fastlm.models import GPT, GPTConfig


def _model(family):
    torch.manual_seed(0)
    return GPT(GPTConfig(family=family, vocab_size=300, n_layer=2, n_head=4, n_kv_head=2 if family == "llama" else None,
                         d_model=32, max_seq_len=32))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_return_logits_false_matches(family):
    model = _model(family)
    ids = torch.randint(0, 300, (2, 12))
    logits, loss = model(ids, labels=ids)
    none, fused = model(ids, labels=ids, return_logits=False)
    assert none is None
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 300).double(), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(loss.double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, loss, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    grads_fused = torch.autograd.grad(fused, list(model.parameters()))
    for a, b in zip(grads, grads_fused):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


class _OwnLossHead(torch.nn.Linear):
    """A head that brings the loss of its logits (as the vocab-parallel head does)."""

    def logits_cross_entropy(self, logits, targets):
        return logits.sum() * 0


def test_head_with_its_own_loss_takes_the_logits_path():
    model = _model("llama")
    head = _OwnLossHead(32, 300, bias=False)
    head.weight = model.lm_head.weight
    model.lm_head = head
    ids = torch.randint(0, 300, (2, 8))
    logits, loss = model(ids, labels=ids, return_logits=False)
    assert logits is not None and loss == 0


def test_plain_torch_head_gets_the_plain_loss():
    model = _model("gpt2")
    ids = torch.randint(0, 300, (2, 8))
    _, fused = model(ids, labels=ids, return_logits=False)
    plain = torch.nn.Linear(32, 300, bias=False)
    plain.weight = model.lm_head.weight
    model.lm_head = plain  # no fused loss offered: logits, then cross-entropy
    logits, loss = model(ids, labels=ids, return_logits=False)
    assert logits is not None
    torch.testing.assert_close(loss, fused, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_fused_loss_compiles_fullgraph_and_trains(family):
    torch._dynamo.reset()
    model = _model(family)
    eager = _model(family)
    ids = torch.randint(0, 300, (2, 12))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    opt, opt_eager = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(eager.parameters(), lr=0.1)
    for _ in range(2):
        _, loss = compiled(ids, labels=ids, return_logits=False)
        _, loss_eager = eager(ids, labels=ids, return_logits=False)
        torch.testing.assert_close(loss, loss_eager, atol=1e-5, rtol=1e-5)
        loss.backward(), loss_eager.backward()
        opt.step(), opt_eager.step()
        opt.zero_grad(), opt_eager.zero_grad()
    for p, q in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)
