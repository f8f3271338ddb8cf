"""The GPT models (with the fastlm norm ops inside) trace whole under torch.compile(fullgraph=True)."""
import pytest
import torch

from fastlm.models import GPT, GPTConfig


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_gpt_compiles_fullgraph(family):
    torch._dynamo.reset()
    config = GPTConfig(family=family, vocab_size=128, n_layer=2, n_head=4, n_kv_head=2 if family == "llama" else None,
                       d_model=32, max_seq_len=32)
    model = GPT(config)
    ids = torch.randint(0, 128, (2, 12))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    logits, loss = compiled(ids, labels=ids)
    logits_eager, loss_eager = model(ids, labels=ids)
    torch.testing.assert_close(logits, logits_eager)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    grads_eager = torch.autograd.grad(loss_eager, list(model.parameters()))
    for got, want in zip(grads, grads_eager):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
