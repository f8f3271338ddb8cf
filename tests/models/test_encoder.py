"""Encoder (BERT / RoBERTa / ALBERT) against Hugging Face transformers with random weights:
hidden states, MLM logits, loss and every gradient, dense and padded batches; unpadding; configs."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fastlm.models import Encoder, EncoderConfig, EncoderForMaskedLM, from_hf, to_hf  # noqa: E402
from fastlm.models.hf_encoder import encoder_state_dict_to_hf  # noqa: E402

V, S = 101, 13
FAMILIES = ("bert", "roberta", "albert")


def make_hf(family: str, head: str = "pretraining", **over):
    """A small transformers model with random (non-trivial) weights, eval mode, no dropout."""
    kw = dict(vocab_size=V, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
              max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    kw.update(over)
    if family == "albert":
        kw.setdefault("embedding_size", 16)
        cfg = transformers.AlbertConfig(**kw)
    else:
        cfg = (transformers.BertConfig if family == "bert" else transformers.RobertaConfig)(**kw)
    cfg._attn_implementation = "eager"
    name = {"bert": "Bert", "roberta": "Roberta", "albert": "Albert"}[family]
    if head == "pretraining" and family == "roberta":
        head = "mlm"
    cls = {"pretraining": "ForPreTraining", "mlm": "ForMaskedLM", "bare": "Model"}[head]
    model = getattr(transformers, name + cls)(cfg)
    with torch.no_grad():  # HF zero-inits biases and unit-inits norms: make every weight matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def batch(family: str, padded: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (3, S), generator=g)
    mask = torch.ones(3, S, dtype=torch.long)
    if padded:
        mask[1, 9:] = 0
        mask[2, 4:] = 0
    pad = 1 if family == "roberta" else 0
    ids = ids.masked_fill(mask == 0, pad)
    types = None
    if family != "roberta":
        types = torch.zeros_like(ids)
        types[:, 6:] = 1
        types = types * mask
    labels = torch.full_like(ids, -100)
    pick = (torch.rand(ids.shape, generator=g) < 0.4) & mask.bool()
    labels[pick] = ids[pick]
    return ids, mask, types, labels


def hf_logits(out):
    return out.logits if hasattr(out, "logits") else out.prediction_logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padded", [False, True])
def test_masked_lm_logits_loss_and_gradients_match_hf(family, padded):
    hf = make_hf(family, "mlm")
    model = from_hf(hf)
    assert isinstance(model, EncoderForMaskedLM) and model.sop_head is None
    ids, mask, types, labels = batch(family, padded)
    out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
    logits, loss = model(ids, mask, types, labels=labels)
    keep = mask.bool()
    torch.testing.assert_close(logits[keep], hf_logits(out)[keep], atol=3e-5, rtol=1e-5)
    torch.testing.assert_close(loss, out.loss, atol=1e-5, rtol=1e-5)
    out.loss.backward()
    loss.backward()
    ours = encoder_state_dict_to_hf_grads(model)
    theirs = {k: p.grad for k, p in hf.named_parameters() if p.grad is not None}
    assert set(ours) == set(theirs)
    for k, g in theirs.items():
        torch.testing.assert_close(ours[k], g, atol=2e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")


def encoder_state_dict_to_hf_grads(model) -> dict[str, torch.Tensor]:
    """Our gradients under HF's parameter names (the mapping of the weights), for the names HF
    reports as parameters (it ties the decoder weight and bias to other parameters)."""
    grads = {k: p.grad for k, p in model.named_parameters()}
    out = encoder_state_dict_to_hf(model, grads)
    hf_names = {k for k, _ in model_hf_parameters(model)}
    return {k: v for k, v in out.items() if k in hf_names}


def model_hf_parameters(model):
    return to_hf(model).named_parameters()


@pytest.mark.parametrize("family", ["bert", "albert"])
def test_pretraining_heads_match_hf(family):
    """BertForPreTraining (NSP) / AlbertForPreTraining (SOP): the 2-way head on the pooler."""
    hf = make_hf(family, "pretraining")
    model = from_hf(hf)
    assert model.sop_head is not None and model.encoder.pooler is not None
    ids, mask, types, labels = batch(family, padded=True)
    order = torch.tensor([0, 1, 1])
    kw = {"next_sentence_label" if family == "bert" else "sentence_order_label": order}
    out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels, **kw)
    logits, loss = model(ids, mask, types, labels=labels, sentence_order_labels=order)
    torch.testing.assert_close(logits[mask.bool()], out.prediction_logits[mask.bool()], atol=3e-5, rtol=1e-5)
    sop = out.seq_relationship_logits if family == "bert" else out.sop_logits
    torch.testing.assert_close(model.sentence_order_logits(ids, mask, types), sop, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(loss, out.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_bare_encoder_hidden_states_and_pooler_match_hf(family):
    hf = make_hf(family, "bare")
    model = from_hf(hf)
    assert type(model) is Encoder and model.pooler is not None
    ids, mask, types, _ = batch(family, padded=True)
    out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
    hidden = model(ids, mask, types)
    assert hidden.shape == (3, S, 32)
    keep = mask.bool()
    torch.testing.assert_close(hidden[keep], out.last_hidden_state[keep], atol=2e-5, rtol=1e-5)
    assert hidden[~keep].abs().max() == 0  # pad positions are not computed
    torch.testing.assert_close(model.pooled(hidden), out.pooler_output, atol=2e-5, rtol=1e-5)


def test_albert_groups_share_blocks_like_hf():
    """4 layers over 2 groups: layers 0-1 run block 0, layers 2-3 block 1 (HF's grouping)."""
    hf = make_hf("albert", "mlm", num_hidden_layers=4, num_hidden_groups=2, embedding_size=8)
    model = from_hf(hf)
    assert len(model.encoder.blocks) == 2 and model.encoder.layer_block == [0, 0, 1, 1]
    assert model.encoder.emb_proj.weight.shape == (32, 8)
    ids, mask, types, labels = batch("albert", padded=True)
    out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
    logits, loss = model(ids, mask, types, labels=labels)
    torch.testing.assert_close(logits[mask.bool()], out.logits[mask.bool()], atol=3e-5, rtol=1e-5)
    torch.testing.assert_close(loss, out.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_is_not_computed(family):
    """The output of a row does not depend on its padding: pad ids, length, types are never read."""
    model = EncoderForMaskedLM(EncoderConfig(family=family, vocab_size=V, n_layer=2, n_head=2, d_model=32,
                                             max_seq_len=40)).eval()
    ids, mask, types, _ = batch(family, padded=True)
    full = model.encoder(ids, mask, types)
    junk = ids.masked_fill(mask == 0, 7)
    junk_types = None if types is None else types.masked_fill(mask == 0, 1)
    if family == "roberta":  # RoBERTa positions count non-pad ids: only the mask may change there
        junk = ids
    torch.testing.assert_close(model.encoder(junk, mask, junk_types), full)
    # Row 2 alone, unpadded, gives the same hidden states as inside the padded batch.
    n = int(mask[2].sum())
    alone = model.encoder(ids[2:, :n], None, None if types is None else types[2:, :n])
    torch.testing.assert_close(alone[0], full[2, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_to_hf_round_trip(family):
    model = EncoderForMaskedLM(EncoderConfig(family=family, vocab_size=V, n_layer=2, n_head=2, d_model=32,
                                             max_seq_len=40), sentence_order=family != "roberta").eval()
    hf = to_hf(model).eval()
    ids, mask, types, _ = batch(family, padded=True)
    out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(model(ids, mask, types)[mask.bool()], hf_logits(out)[mask.bool()],
                               atol=3e-5, rtol=1e-5)
    back = from_hf(hf)
    for (k, a), (k2, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    bare = Encoder(model.config, add_pooler=True)
    assert type(to_hf(bare)).__name__.endswith("Model")


def test_encoder_config_defaults_and_errors():
    c = EncoderConfig(family="albert", vocab_size=50, n_layer=4, n_head=2, d_model=32).resolved()
    assert (c.embedding_size, c.n_layer_groups, c.activation, c.type_vocab_size) == (128, 1, "gelu_new", 2)
    r = EncoderConfig(family="roberta", vocab_size=50, n_layer=1, n_head=2, d_model=32, max_seq_len=16)
    assert Encoder(r).pos_emb.weight.shape[0] == 16 + 2  # pad_token_id 1 + 1 rows before position 0
    with pytest.raises(ValueError, match="model.family = 'gpt2'"):
        EncoderConfig(family="gpt2").validate()
    with pytest.raises(ValueError, match="model.n_head = 5"):
        EncoderConfig(n_head=5, d_model=32).validate()
    with pytest.raises(ValueError, match="model.pad_token_id = 60"):
        EncoderConfig(vocab_size=50, pad_token_id=60).validate()
    model = Encoder(EncoderConfig(vocab_size=50, n_layer=1, n_head=2, d_model=32, max_seq_len=8))
    with pytest.raises(ValueError, match="longer than max_seq_len 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 3))


@pytest.mark.parametrize("change,match", [
    (dict(position_embedding_type="relative_key"), "position_embedding_type"),
    (dict(is_decoder=True), "is_decoder"),
    (dict(hidden_act="tanh_unknown"), "hidden_act"),
])
def test_unsupported_hf_encoder_configs_rejected(change, match):
    from fastlm.models.hf_encoder import encoder_config_from_hf

    d = {"model_type": "bert", "vocab_size": V, "hidden_size": 32, "num_hidden_layers": 1,
         "num_attention_heads": 4, **change}
    with pytest.raises(ValueError, match=match):
        encoder_config_from_hf(d)
    with pytest.raises(ValueError, match="inner_group_num"):
        encoder_config_from_hf({"model_type": "albert", "inner_group_num": 2})
