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


def test_swapped_loss_disables_the_fused_path():
    model = _model("llama")
    model.loss_fn = lambda logits, targets: logits.sum() * 0  # what tensor parallel does (its own loss)
    ids = torch.randint(0, 300, (2, 8))
    logits, loss = model(ids, labels=ids, return_logits=False)
    assert logits is not None and loss == 0


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
