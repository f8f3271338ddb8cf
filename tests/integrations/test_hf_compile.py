"""A patched HF LLaMA traces whole under torch.compile(fullgraph=True) and trains a step like eager."""
import copy

import pytest
import torch

from fastlm.integrations.huggingface import apply_fastlm

from .hf_models import _unpatch, build  # noqa: F401

transformers = pytest.importorskip("transformers")


def test_patched_llama_compiles_fullgraph_and_trains_a_step():
    torch._dynamo.reset()
    model = apply_fastlm(build("llama"))
    eager = copy.deepcopy(model)
    ids = torch.randint(1, 257, (2, 16))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_eager = torch.optim.SGD(eager.parameters(), lr=0.1)
    for _ in range(2):
        loss = compiled(input_ids=ids, labels=ids).loss
        loss_eager = eager(input_ids=ids, labels=ids).loss
        torch.testing.assert_close(loss, loss_eager, atol=1e-5, rtol=1e-5)
        loss.backward(), loss_eager.backward()
        opt.step(), opt_eager.step()
        opt.zero_grad(), opt_eager.zero_grad()
    for p, q in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)
