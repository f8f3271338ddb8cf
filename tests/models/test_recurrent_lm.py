"""RecurrentLM (model.family = rnn | lstm | gru) against a hand-built torch.nn composition, and its
stepwise generation and carried state against full forwards."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastlm.models import RecurrentConfig, RecurrentLM

TORCH = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


def _model(family: str, **kw) -> RecurrentLM:
    torch.manual_seed(0)
    cfg = RecurrentConfig(family=family, vocab_size=29, n_layer=2, d_model=11, max_seq_len=16, **kw)
    return RecurrentLM(cfg)


@pytest.mark.parametrize("family", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("tied", [True, False])
def test_forward_and_loss_match_torch_nn(family, tied):
    model = _model(family, tie_embeddings=tied)
    ref = TORCH[family](11, 11, num_layers=2, batch_first=True)
    ref.load_state_dict(model.rnn.state_dict())
    ids = torch.randint(0, 29, (3, 9))
    expected = model.tok_emb(ids)
    expected = ref(expected)[0] @ model.lm_head.weight.t()
    torch.testing.assert_close(model(ids), expected, atol=1e-5, rtol=1e-5)
    labels = ids.clone()
    labels[0, 4] = -100
    logits, loss = model(ids, labels)
    want = F.cross_entropy(expected[:, :-1].reshape(-1, 29), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)
    _, fused = model(ids, labels, return_logits=False)
    torch.testing.assert_close(fused, want, atol=1e-5, rtol=1e-5)
    fused.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert (model.lm_head.weight is model.tok_emb.weight) == tied
    assert model.num_params() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", ["lstm", "gru", "rnn"])
def test_greedy_generate_equals_recomputing_the_whole_sequence(family):
    model = _model(family).eval()
    prompt = torch.randint(0, 29, (2, 4))
    out = model.generate(prompt, max_new_tokens=20, temperature=0.0)  # past max_seq_len (no context limit)
    assert out.shape == (2, 24) and torch.equal(out[:, :4], prompt)
    for t in range(4, 24):
        assert torch.equal(model(out[:, :t])[:, -1].argmax(-1), out[:, t])


def test_stateful_training_carries_the_state_and_eval_does_not():
    model = _model("lstm")
    model.stateful = True
    ids = torch.randint(0, 29, (2, 12))
    whole = model.eval()(ids)  # eval: stateless, from zeros (dropout is 0, so train mode computes the same)
    model.train()
    first, second = model(ids[:, :5]), model(ids[:, 5:])  # the second continues the first's rows
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-5, rtol=1e-5)
    assert model._carried[0].requires_grad is False  # truncated: detached
    model.eval()
    assert not torch.allclose(model(ids[:, 5:]), whole[:, 5:], atol=1e-4)  # stateless in eval: from zeros
    model.train()
    model(ids[:1, :5])  # another batch size: starts from zeros instead of a mismatched state
    model.reset_state()
    assert model._carried is None


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="model.family"):
        RecurrentConfig(family="transformer").validate()
    with pytest.raises(ValueError, match="model.d_model"):
        RecurrentConfig(d_model=0).validate()
    with pytest.raises(ValueError, match="model.dropout"):
        RecurrentConfig(dropout=1.5).validate()
    model = _model("gru")
    with pytest.raises(ValueError, match="cu_seqlens"):
        model(torch.zeros(1, 3, dtype=torch.long), cu_seqlens=torch.tensor([0, 3]))
