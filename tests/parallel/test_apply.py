"""apply_* functions applied from outside: activation checkpointing and torch.compile of the blocks
leave names and results as they were; parallelize composes them from a config."""
from __future__ import annotations

import copy

import pytest
import torch

from fastlm.models import GPT, EncoderConfig, EncoderForMaskedLM, GPTConfig
from fastlm.parallel import ParallelModel, apply_activation_checkpointing, apply_compile, parallelize


def _gpt(family="llama"):
    torch.manual_seed(0)
    return GPT(GPTConfig(family=family, vocab_size=96, n_layer=2, n_head=4, n_kv_head=2 if family == "llama" else None,
                         d_model=32, max_seq_len=16))


def _bert():
    torch.manual_seed(0)
    return EncoderForMaskedLM(EncoderConfig(family="bert", vocab_size=96, n_layer=2, n_head=4, d_model=32,
                                            max_seq_len=16))


def _loss_and_grads(model, ids):
    if isinstance(model, GPT):
        loss = model(ids, labels=ids, return_logits=False)[1]
    else:
        mask = torch.ones_like(ids)
        mask[0, -3:] = 0  # padding goes through the packed (varlen) path
        loss = model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))[1]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.parametrize("build", [_gpt, lambda: _gpt("gpt2"), _bert], ids=["llama", "gpt2", "bert"])
def test_activation_checkpointing_keeps_names_and_gradients(build):
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    plain, checkpointed = build(), apply_activation_checkpointing(build())
    assert list(plain.state_dict()) == list(checkpointed.state_dict())
    loss, grads = _loss_and_grads(plain, ids)
    loss_ckpt, grads_ckpt = _loss_and_grads(checkpointed, ids)
    torch.testing.assert_close(loss_ckpt, loss)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], msg=name)
    clone = copy.deepcopy(checkpointed)  # a deep copy runs its own weights
    with torch.no_grad():
        clone.blocks[0].attn.qkv.weight.zero_() if isinstance(clone, GPT) else \
            clone.encoder.blocks[0].attn.qkv.weight.zero_()
    assert not torch.equal(_loss_and_grads(clone, ids)[0], loss)
    assert torch.equal(_loss_and_grads(checkpointed, ids)[0], loss_ckpt)


def test_activation_checkpointing_recomputes_in_the_backward():
    model = apply_activation_checkpointing(_gpt())
    calls = []
    model.blocks[0].attn.register_forward_hook(lambda *a: calls.append(1))
    ids = torch.randint(0, 96, (2, 12))
    model(ids, labels=ids)[1].backward()
    assert len(calls) == 2  # the forward, and again in the backward
    calls.clear()
    with torch.no_grad():
        model(ids)
    assert len(calls) == 1  # nothing to recompute without gradients


@pytest.mark.parametrize("build", [_gpt, _bert], ids=["llama", "bert"])
def test_compiled_blocks_equal_eager(build):
    torch._dynamo.reset()
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(2))
    eager, compiled = build(), apply_compile(build(), backend="aot_eager")
    loss, grads = _loss_and_grads(eager, ids)
    loss_c, grads_c = _loss_and_grads(compiled, ids)
    torch.testing.assert_close(loss_c, loss, atol=1e-5, rtol=1e-5)
    for name in grads:
        torch.testing.assert_close(grads_c[name], grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_apply_needs_blocks():
    with pytest.raises(ValueError, match="has no fastlm.nn.Block"):
        apply_activation_checkpointing(torch.nn.Linear(2, 2))


def test_parallelize_in_one_process_applies_what_the_config_asks():
    from fastlm.quant.int8_training import Int8TrainLinear
    from tests.train.train_helpers import micro_config

    config = micro_config("train.activation_checkpointing=true", "model.linear=\"int8_train\"", "model.dropout=0.0")
    model = GPT(config.model.architecture())
    pm = parallelize(model, None, config)
    assert isinstance(pm, ParallelModel) and pm.module is model and pm.runner is model and pm.dp is None
    assert type(model.blocks[0]).__name__ == "CheckpointedBlock"
    assert isinstance(model.blocks[0].mlp.fc, Int8TrainLinear) and not isinstance(model.lm_head, Int8TrainLinear)
    assert not pm.sharded and pm.layout == {"dp": 1, "tp": 1, "pp": 1}
