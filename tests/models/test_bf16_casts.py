"""bf16 training's cast plumbing (issue 21): the pre-norm blocks' RMSNorms emit the autocast dtype, so
the Linears after them take 16-bit inputs without a cast. A LLaMA step under CPU autocast is as accurate
(loss and every gradient, against the same model in float64) as with the norms emitting fp32 (the
casts in the Linears); fp32 training is unchanged bit for bit."""
import copy

import torch

from fastlm.models import GPT, GPTConfig
from fastlm.nn import RMSNorm

from ..ops.accuracy import assert_as_accurate


def _model():
    torch.manual_seed(0)
    return GPT(GPTConfig(family="llama", vocab_size=300, n_layer=2, n_head=4, n_kv_head=2, d_model=64,
                         max_seq_len=32))


def _loss_and_grads(model, ids, bf16):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(ids, labels=ids, return_logits=False)[1]
    return [loss.detach()] + [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]


def _with_fp32_norm_outputs(model):
    old = copy.deepcopy(model)
    for m in old.modules():
        if isinstance(m, RMSNorm):
            m.autocast_output = False
    return old


def test_prenorm_blocks_emit_the_autocast_dtype():
    model = _model()
    norms = [b.norm1 for b in model.blocks] + [b.norm2 for b in model.blocks]
    assert norms and all(n.autocast_output for n in norms)
    assert not model.norm.autocast_output  # the final norm's output may be returned as hidden states
    x = torch.randn(2, 5, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norms[0](x).dtype == torch.bfloat16 and model.norm(x).dtype == torch.float32


def test_bf16_step_as_accurate_as_with_fp32_norm_outputs_and_fp32_unchanged():
    model = _model()
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    old = _with_fp32_norm_outputs(model)
    want64 = _loss_and_grads(copy.deepcopy(model).double(), ids, bf16=False)
    new_bf16, old_bf16 = _loss_and_grads(model, ids, bf16=True), _loss_and_grads(old, ids, bf16=True)
    names = ["loss"] + [n for n, _ in model.named_parameters()]
    for name, got, ref64, ref_old in zip(names, new_bf16, want64, old_bf16):
        assert got.dtype == ref_old.dtype, name
        assert_as_accurate(name, got, ref64, ref_old, dtype=torch.bfloat16)
    for name, a, b in zip(names, _loss_and_grads(model, ids, bf16=False), _loss_and_grads(old, ids, bf16=False)):
        assert torch.equal(a, b), name
