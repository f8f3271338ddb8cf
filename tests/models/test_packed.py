"""Packed documents ([data] pack = true): cu_seqlens through the loader, the model and the trainer."""
import pytest
import torch
import torch.nn.functional as F

from fastlm.data import BatchLoader, PackedBatch, pack_documents
from fastlm.models import GPT, GPTConfig
from fastlm.nn.attention import attention_bthd


def _model(family, dropout=0.0):
    torch.manual_seed(0)
    cfg = GPTConfig(family=family, vocab_size=50, n_layer=2, n_head=4, n_kv_head=2 if family == "llama" else None,
                    d_model=32, max_seq_len=64, dropout=dropout)
    return GPT(cfg).eval()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_packed_batch_equals_documents_one_by_one(family):
    """Same logits and per-document losses as running each document alone (positions restart)."""
    model = _model(family)
    docs = [torch.randint(1, 50, (n,)) for n in (7, 1, 12, 4, 20, 4)]  # 2 rows of 24 tokens
    ids = torch.cat(docs).view(2, 24)
    lengths = torch.tensor([len(d) for d in docs])
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(torch.int32)
    logits, loss = model(ids, labels=ids, cu_seqlens=cu)
    flat = logits.view(48, -1)
    losses, counted = [], 0
    for doc, start in zip(docs, cu[:-1].tolist()):
        alone = model(doc[None])[0]
        torch.testing.assert_close(flat[start:start + len(doc)], alone, atol=2e-5, rtol=1e-5)
        if len(doc) > 1:
            losses.append(F.cross_entropy(alone[:-1], doc[1:], reduction="sum"))
            counted += len(doc) - 1
    torch.testing.assert_close(loss, torch.stack(losses).sum() / counted, atol=1e-5, rtol=1e-5)
    # Without cu_seqlens the documents would see each other: the logits differ.
    assert not torch.allclose(model(ids).view(48, -1)[7:], flat[7:], atol=1e-3)


def test_packed_gradients_match_one_by_one():
    model = _model("llama")
    docs = [torch.randint(1, 50, (n,)) for n in (5, 11)]
    ids = torch.cat(docs)[None]
    cu = torch.tensor([0, 5, 16], dtype=torch.int32)
    _, loss = model(ids, labels=ids, cu_seqlens=cu)
    packed = torch.autograd.grad(loss * 14, list(model.parameters()))
    total = sum(model(d[None], labels=d[None])[1] * (len(d) - 1) for d in docs)
    alone = torch.autograd.grad(total, list(model.parameters()))
    for got, want in zip(packed, alone):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_dropout_fallback_respects_documents():
    """With attention dropout (SDPA fallback, explicit mask) documents still do not mix."""
    q, k, v = (torch.randn(1, 10, h, 16) for h in (4, 2, 2))
    cu = torch.tensor([0, 3, 10], dtype=torch.int32)
    fused = attention_bthd(q, k, v, cu_seqlens=cu)
    fallback = attention_bthd(q, k, v, cu_seqlens=cu, dropout_p=1e-9)  # forces SDPA, negligible dropout
    torch.testing.assert_close(fused, fallback, atol=1e-5, rtol=1e-5)


def test_pack_documents_boundaries():
    eos = 0
    batch = torch.tensor([[5, 6, 0, 7, 8, 0], [9, 0, 3, 4, 5, 6]])
    packed = pack_documents(batch, eos)
    assert isinstance(packed, PackedBatch) and packed.input_ids is batch
    assert packed.cu_seqlens.tolist() == [0, 3, 6, 8, 12]  # eos at a row end adds no extra boundary
    assert packed.cu_seqlens.dtype == torch.int32


def test_loader_yields_packed_batches():
    tokens = torch.randint(1, 20, (500,)).numpy()
    tokens[::7] = 0
    loader = BatchLoader(tokens, seq_len=16, global_batch_size=4, micro_batch_size=2, seed=0, prefetch=0,
                         pack_eos_id=0)
    plain = BatchLoader(tokens, seq_len=16, global_batch_size=4, micro_batch_size=2, seed=0, prefetch=0)
    for got, want in zip(loader.next(), plain.next()):
        assert torch.equal(got.input_ids, want)  # the same windows, plus boundaries
        cu = got.cu_seqlens.tolist()
        assert cu[0] == 0 and cu[-1] == 32 and 16 in cu
        ends = [c - 1 for c in cu[1:]]
        flat = want.flatten()
        assert all(flat[e] == 0 or (e + 1) % 16 == 0 for e in ends)  # each document ends at eos or a row end


@pytest.mark.parametrize("dropout", ["0.0", "0.1"])
def test_trainer_runs_packed(tmp_path, dropout):
    from fastlm.train import Trainer

    from ..train.train_helpers import micro_config

    config = micro_config("data.pack=true", f"model.dropout={dropout}", "train.steps=2", "checkpoint.every=0")
    summary = Trainer(config, out_dir=tmp_path / "run", show_progress=False).fit()
    assert summary["val_loss"] == summary["val_loss"]  # finite, not NaN
