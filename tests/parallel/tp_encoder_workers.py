"""Code that runs on every rank of the encoder tensor-parallel tests (spawned by dist_helpers.run_world).

train() trains a small masked-LM encoder (BERT, RoBERTa, ALBERT) for a few steps at the given
(dp, tp) layout on fixed, padded global batches and returns the losses, gradient norms and full
(gathered, plain-key) parameters. Every step's global batch is two halves: one micro-batch each on
two dp ranks, or two accumulated micro-batches on one, so every layout computes the same loss.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from tests.parallel.tp_workers import _load, _save, add_lora

G, T, STEPS, VOCAB = 8, 8, 3, 67  # an odd vocabulary: tp = 2 splits it 34 + 33
LR = 1e-2


def model_config(family: str):
    from fastlm.models import EncoderConfig

    base = dict(family=family, vocab_size=VOCAB, n_layer=2, n_head=4, d_model=32, d_ff=48, max_seq_len=T)
    if family == "albert":  # factorized embedding (E < H) and 3 layers sharing one block
        base.update(embedding_size=16, n_layer=3, n_layer_groups=1)
    return EncoderConfig(**base)


def build(family: str):
    from fastlm.models import EncoderForMaskedLM

    torch.manual_seed(0)
    return EncoderForMaskedLM(model_config(family), sentence_order=family == "albert")  # + pooler, SOP head


def data(family: str, steps: int = STEPS) -> dict:
    """(steps, G, T) padded batches: rows of 3..T real tokens (pads = pad_token_id, mask 0), two segments
    (RoBERTa: one), about a third of the real tokens labelled (at least one per row). The first steps of STEPS."""
    out = _data(family, max(steps, STEPS))
    return {k: v[:steps] for k, v in out.items()}


def _data(family: str, steps: int) -> dict:
    g = torch.Generator().manual_seed(1)
    pad = model_config(family).resolved().pad_token_id
    ids = torch.randint(3, VOCAB, (steps, G, T), generator=g)
    lengths = torch.randint(3, T + 1, (steps, G), generator=g)
    lengths[:, 0] = T  # some rows without padding
    pos = torch.arange(T)
    mask = (pos < lengths[..., None]).long()
    ids = ids.masked_fill(mask == 0, pad)
    types = ((pos >= lengths[..., None] // 2) & (mask == 1)).long()
    if family == "roberta":
        types.zero_()  # one token type
    pick = (torch.rand(steps, G, T, generator=g) < 0.35) & (mask == 1)
    pick[..., 1] = True
    labels = torch.randint(0, VOCAB, (steps, G, T), generator=g).masked_fill(~pick, -100)
    sop = torch.randint(0, 2, (steps, G), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels,
            "sentence_order_labels": sop}


def train(rank, world, spec):
    """spec: family, tp, steps, save_at / save_to (a sharded checkpoint), load_from, lora (apply_lora's options)."""
    from fastlm.parallel import DataParallel, init_mesh
    from fastlm.parallel.tensor import clip_grad_norm_, parallelize_tp
    from fastlm.parallel.tensor.checkpoint import full_state_dict

    family, tp = spec["family"], spec.get("tp", 1)
    mesh = init_mesh(tp=tp) if world > 1 else None
    model = build(family)
    if spec.get("lora"):
        add_lora(model, spec["lora"])
    if tp > 1:
        parallelize_tp(model, mesh)
    dp = DataParallel(model, mesh, bucket_mb=0.004) if mesh is not None and mesh.dp > 1 else None
    net = dp if dp is not None else model
    opt = torch.optim.AdamW(model.parameters(), lr=LR, eps=1e-4, weight_decay=0.1)
    if dp is not None:
        opt = dp.wrap_optimizer(opt)
    dp_size, dp_rank = (mesh.dp, mesh.dp_rank) if mesh is not None else (1, 0)
    halves = 2 // dp_size  # micro-batches per rank
    batches = data(family, spec.get("steps", STEPS))
    if family != "albert":
        batches.pop("sentence_order_labels")
    losses, norms = [], []
    first = _load(spec["load_from"], model, opt) if spec.get("load_from") else 0
    for s in range(first, batches["input_ids"].shape[0]):
        if spec.get("save_at") == s:
            _save(spec["save_to"], s, model, opt)
        total = torch.zeros(())
        for j in range(halves):
            lo = (dp_rank * halves + j) * (G // 2)
            micro = {k: v[s, lo:lo + G // 2] for k, v in batches.items()}
            with net.no_sync() if dp is not None and j < halves - 1 else nullcontext():
                loss = net(**micro)[1] / halves
                loss.backward()
            total += loss.detach()
        if dp is not None:
            dp.finish_grad_sync()
        if mesh is not None and mesh.tp > 1:
            norm = clip_grad_norm_(model, 0.5, mesh, dp)
        elif dp is not None:
            norm = dp.clip_grad_norm_(0.5)
        else:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dp is not None:
            total = dp.mean_over_ranks(total)
        losses.append(float(total))
        norms.append(float(norm))
    enc = model.encoder
    split = {"qkv rows": enc.blocks[0].attn.qkv.weight.shape[0], "fc rows": enc.blocks[0].mlp.fc.weight.shape[0],
             "vocab rows": enc.tok_emb.weight.shape[0], "tied": model.mlm_head.decoder.weight is enc.tok_emb.weight}
    return {"losses": losses, "norms": norms, "params": full_state_dict(model), "split": split}


def forward_checks(rank, world, family):
    """tp = world forward of a padded batch (hidden states, MLM loss) and of a bare Encoder and a
    sequence classifier, each against the plain model built from the same seed: {name: max abs error}."""
    from fastlm.models import Encoder, EncoderForSequenceClassification
    from fastlm.parallel import init_mesh
    from fastlm.parallel.tensor import parallelize_tp

    mesh = init_mesh(tp=world)
    b = {k: v[0] for k, v in data(family, 1).items() if k != "sentence_order_labels"}
    errs = {}
    for name, make in (("mlm", lambda: build(family)),
                       ("encoder", lambda: Encoder(model_config(family))),
                       ("classifier", lambda: EncoderForSequenceClassification(model_config(family), num_labels=3))):
        torch.manual_seed(0)
        plain = make().eval()
        torch.manual_seed(0)
        par = parallelize_tp(make(), mesh).eval()
        with torch.no_grad():
            if name == "mlm":
                ref, got = plain(**b)[1], par(**b)[1]
            else:
                args = (b["input_ids"], b["attention_mask"], b["token_type_ids"])
                ref, got = plain(*args), par(*args)
        errs[name] = float((ref - got).abs().max())
    # The word embedding's padding row (nn.Embedding padding_idx) gets no gradient when split either.
    from fastlm.parallel.tensor import VocabParallelEmbedding
    from fastlm.parallel.tensor.collectives import chunk_range

    for pad in (0, VOCAB - 2):  # on the first rank's slice, on the last's
        emb = torch.nn.Embedding(VOCAB, 5, padding_idx=pad, dtype=torch.float64)
        par = VocabParallelEmbedding.from_embedding(emb, group=mesh.tp_group)
        ids = torch.tensor([[pad, 1, pad, VOCAB - 1, 40]])
        gy = torch.randn(1, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        emb(ids).backward(gy)
        par(ids).backward(gy)
        lo, hi = chunk_range(VOCAB, world, mesh.tp_rank)
        errs[f"padding_idx {pad} grad"] = float((emb.weight.grad[lo:hi] - par.weight.grad).abs().max())
    try:
        parallelize_tp(build(family), mesh, sequence_parallel=True)
        errs["sequence parallel rejected"] = 1.0
    except ValueError as e:
        errs["sequence parallel rejected"] = 0.0 if "not available for encoders" in str(e) else 1.0
    return errs
