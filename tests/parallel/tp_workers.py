"""Code that runs on every rank of the tensor-parallel tests (spawned by dist_helpers.run_world).

train() trains a small GPT for a few steps at the given (dp, tp) layout on a fixed global batch
per step and returns the global losses and the full (gathered, plain-key) parameters. With
world == 1 it is the single-process reference.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

G, T, STEPS, VOCAB = 8, 8, 3, 67  # an odd vocabulary: tp = 2 splits it 34 + 33
LR = 1e-2


def model_config(family: str, **over):
    from fastlm.models import GPTConfig

    base = dict(family=family, vocab_size=VOCAB, n_layer=2, n_head=4, d_model=32, max_seq_len=T)
    if family == "llama":
        base.update(n_kv_head=1, d_ff=48)  # GQA with fewer kv heads than tp ranks (replicated K/V)
    return GPTConfig(**{**base, **over})


def build(family: str, **over):
    from fastlm.models import GPT

    torch.manual_seed(0)
    return GPT(model_config(family, **over))


def data(steps=STEPS):
    return torch.randint(0, VOCAB, (steps, G, T), generator=torch.Generator().manual_seed(1))


def train(rank, world, spec):
    """spec: family, tp, sp (sequence parallel), steps, accum, shard (ZeRO-1), recompute (activation
    checkpointing), model overrides, save_at / save_to (a sharded checkpoint), load_from."""
    from fastlm.parallel import DataParallel, init_mesh
    from fastlm.parallel.tensor import clip_grad_norm_, parallelize_tp
    from fastlm.parallel.tensor.checkpoint import full_state_dict

    tp = spec.get("tp", 1)
    mesh = init_mesh(tp=tp) if world > 1 else None
    model = build(spec["family"], **spec.get("model", {}))
    if spec.get("lora"):
        add_lora(model, spec["lora"])
    if tp > 1:
        parallelize_tp(model, mesh, sequence_parallel=spec.get("sp", False))
    if spec.get("recompute", False):  # the collectives run again in the backward
        from fastlm.parallel import apply_activation_checkpointing

        apply_activation_checkpointing(model)
    dp = None
    if mesh is not None and mesh.dp > 1:
        dp = DataParallel(model, mesh, bucket_mb=0.004, shard_optimizer=spec.get("shard", False))
    net = dp if dp is not None else model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, eps=1e-4, weight_decay=0.1)
    if dp is not None:
        opt = dp.wrap_optimizer(opt)
    dp_size, dp_rank = (mesh.dp, mesh.dp_rank) if mesh is not None else (1, 0)
    per = G // dp_size
    accum = spec.get("accum", 1)
    losses, norms = [], []
    first = 0
    if spec.get("load_from"):
        first = _load(spec["load_from"], model, opt)
    batches = data(spec.get("steps", STEPS))
    for s in range(first, batches.shape[0]):
        if spec.get("save_at") == s:
            _save(spec["save_to"], s, model, opt)
        micro = batches[s, dp_rank * per:(dp_rank + 1) * per].chunk(accum)
        total = torch.zeros(())
        for j, x in enumerate(micro):
            with net.no_sync() if dp is not None and j < accum - 1 else nullcontext():
                loss = net(x, labels=x)[1] / accum
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
    return {"losses": losses, "norms": norms, "params": full_state_dict(model)}


def add_lora(model, options):
    """LoRA adapters (fastlm.nn.lora) with a non-zero B, so that A's gradient is not zero from the first step
    (the same draws on every rank)."""
    from fastlm.nn.lora import apply_lora, lora_layers

    apply_lora(model, **options)
    torch.manual_seed(2)
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_B, std=0.05)


def _save(path, step, model, opt):
    import json

    import torch.distributed as dist

    from fastlm.parallel.tensor.checkpoint import save_sharded
    from fastlm.train.sharded_checkpoint import optimizer_state_by_name

    state, adam_step, groups = optimizer_state_by_name(model, opt)
    save_sharded(path, model, state)
    if not dist.is_initialized() or dist.get_rank() == 0:
        (Path(path) / "extra.json").write_text(json.dumps({"step": step, "adam_step": adam_step, "groups": groups}))
    if dist.is_initialized():
        dist.barrier()


def _load(path, model, opt) -> int:
    import json

    from fastlm.parallel.tensor.checkpoint import load_sharded
    from fastlm.train.sharded_checkpoint import load_optimizer_state_by_name

    extra = json.loads((Path(path) / "extra.json").read_text())
    state = {n: {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)} for n, p in model.named_parameters()}
    load_sharded(path, model, state)
    load_optimizer_state_by_name(model, opt, state, extra["adam_step"], extra["groups"])
    return extra["step"]


# ---------------------------------------------------------------- layers and collectives

def _max_err(a, b) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def layer_checks(rank, world):
    """Every layer and collective at tp = world against its tp = 1 / by-definition counterpart.
    Returns {check name: max abs error} (float64 math where the definition is computed)."""
    import torch.nn.functional as F

    from fastlm.parallel import init_mesh
    from fastlm.parallel.tensor import (
        ColumnParallelLinear,
        GQAColumnParallelLinear,
        RowParallelLinear,
        VocabParallelEmbedding,
        copy_to_tp,
        gather_from_sequence,
        gather_from_tp,
        reduce_from_tp,
        reduce_scatter_to_sequence,
        scatter_to_sequence,
        scatter_to_tp,
        vocab_parallel_cross_entropy,
    )
    from fastlm.parallel.tensor.collectives import chunk_range

    mesh = init_mesh(tp=world)
    g, tp, r = mesh.tp_group, world, mesh.tp_rank
    errs = {}
    torch.manual_seed(0)  # the same draws on every rank: inputs and full layers are replicated
    B, T, K = 3, 4, 13  # odd sizes

    def chunk(t, dim):
        lo, hi = chunk_range(t.shape[dim], tp, r)
        return t.narrow(dim, lo, hi - lo)

    # --- collectives: forward and backward by definition. Every rank's input differs (x * (rank + 1)).
    x = torch.randn(B, T * tp, K, dtype=torch.float64)
    gy = torch.randn(B, T * tp, K, dtype=torch.float64)
    scale = r + 1
    total = sum(range(1, tp + 1))

    def run(fn, inp, grad_out):
        inp = inp.clone().requires_grad_(True)
        out = fn(inp)
        out.backward(grad_out)
        return out.detach(), inp.grad

    out, grad = run(lambda t: copy_to_tp(t, g), x * scale, gy * scale)
    errs["copy fwd"], errs["copy bwd"] = _max_err(out, x * scale), _max_err(grad, gy * total)
    out, grad = run(lambda t: reduce_from_tp(t, g), x * scale, gy * scale)
    errs["reduce fwd"], errs["reduce bwd"] = _max_err(out, x * total), _max_err(grad, gy * scale)
    out, grad = run(lambda t: scatter_to_tp(t, g, -1), x, chunk(gy, -1) * scale)
    full_grad = torch.cat([gy.narrow(-1, *_span(K, tp, i)) * (i + 1) for i in range(tp)], -1)
    errs["scatter fwd"], errs["scatter bwd"] = _max_err(out, chunk(x, -1)), _max_err(grad, full_grad)
    out, grad = run(lambda t: gather_from_tp(t, g, -1, K), chunk(x, -1) * scale, gy)
    full = torch.cat([x.narrow(-1, *_span(K, tp, i)) * (i + 1) for i in range(tp)], -1)
    errs["gather fwd"], errs["gather bwd"] = _max_err(out, full), _max_err(grad, chunk(gy, -1))
    out, grad = run(lambda t: scatter_to_sequence(t, g), x, chunk(gy, 1) * scale)
    full_grad = torch.cat([gy.narrow(1, *_span(T * tp, tp, i)) * (i + 1) for i in range(tp)], 1)
    errs["seq scatter fwd"], errs["seq scatter bwd"] = _max_err(out, chunk(x, 1)), _max_err(grad, full_grad)
    out, grad = run(lambda t: gather_from_sequence(t, g), chunk(x, 1) * scale, gy * scale)
    full = torch.cat([x.narrow(1, *_span(T * tp, tp, i)) * (i + 1) for i in range(tp)], 1)
    errs["seq gather fwd"], errs["seq gather bwd"] = _max_err(out, full), _max_err(grad, chunk(gy, 1) * total)
    out, grad = run(lambda t: reduce_scatter_to_sequence(t, g), x * scale, chunk(gy, 1) * scale)
    full_grad = torch.cat([gy.narrow(1, *_span(T * tp, tp, i)) * (i + 1) for i in range(tp)], 1)
    errs["seq reduce-scatter fwd"] = _max_err(out, chunk(x, 1) * total)
    errs["seq reduce-scatter bwd"] = _max_err(grad, full_grad)

    # --- layers: tp vs the full layer (fp64), forward and gradients
    def compare(name, full_mod, par_mod, inp, par_inp=None, to_full_grads=None):
        inp1 = inp.clone().requires_grad_(True)
        inp2 = (par_inp if par_inp is not None else inp).clone().requires_grad_(True)
        y1, y2 = full_mod(inp1), par_mod(inp2)
        gy_ = torch.randn(y1.shape, dtype=y1.dtype, generator=torch.Generator().manual_seed(5))
        y1.backward(gy_)
        # the output gradient this rank gets (a third mapper: this rank's share of a replicated output)
        local_gy = (to_full_grads[2 if len(to_full_grads) > 2 else 0] if to_full_grads else (lambda t: t))(gy_)
        y2.backward(local_gy)
        errs[f"{name} fwd"] = _max_err(to_full_grads[0](y1.detach()) if to_full_grads else y1.detach(), y2.detach())
        errs[f"{name} input grad"] = _max_err(to_full_grads[1](inp1.grad) if to_full_grads else inp1.grad, inp2.grad)
        return full_mod, par_mod

    x = torch.randn(B, T, K, dtype=torch.float64)
    full = torch.nn.Linear(K, 2 * 9, dtype=torch.float64)  # gate | up of 9 each (odd)
    col = ColumnParallelLinear.from_linear(full, group=g, parts=[("gate", 9), ("up", 9)])
    lo, hi = chunk_range(9, tp, r)
    rows = list(range(lo, hi)) + list(range(9 + lo, 9 + hi))
    sel = lambda t: t[..., rows]  # noqa: E731
    compare("column (gate|up)", full, col, x, to_full_grads=(sel, lambda t: t))
    errs["column weight grad"] = _max_err(full.weight.grad[rows], col.weight.grad)
    errs["column bias grad"] = _max_err(full.bias.grad[rows], col.bias.grad)

    full = torch.nn.Linear(K, 11, dtype=torch.float64)  # uneven split, gathered output
    col = ColumnParallelLinear.from_linear(full, group=g, gather_output=True)
    compare("column gathered", full, col, x)
    errs["column gathered weight grad"] = _max_err(chunk(full.weight.grad, 0), col.weight.grad)

    full = torch.nn.Linear(2 * tp + 3, K, dtype=torch.float64)
    row = RowParallelLinear.from_linear(full, group=g)
    xi = torch.randn(B, T, 2 * tp + 3, dtype=torch.float64)
    compare("row", full, row, xi, par_inp=chunk(xi, -1), to_full_grads=(lambda t: t, lambda t: chunk(t, -1)))
    errs["row weight grad"] = _max_err(chunk(full.weight.grad, 1), row.weight.grad)
    errs["row bias grad"] = _max_err(full.bias.grad, row.bias.grad)

    full = torch.nn.Linear(2 * tp, K, dtype=torch.float64)  # sequence parallel: the output on sequence shards
    row = RowParallelLinear.from_linear(full, group=g, sequence_parallel=True)
    xi = torch.randn(B, T * tp, 2 * tp, dtype=torch.float64)
    compare("row seq-parallel", full, row, xi, par_inp=chunk(xi, -1),
            to_full_grads=(lambda t: chunk(t, 1), lambda t: chunk(t, -1)))
    errs["row seq-parallel bias grad"] = _max_err(full.bias.grad, row.bias.grad)

    full = torch.nn.Linear(K, (4 + 2 * 1) * 3, dtype=torch.float64)  # 4 q heads, 1 kv head, head_dim 3
    gqa = GQAColumnParallelLinear.from_linear(full, n_head=4, n_kv_head=1, head_dim=3, group=g)
    qrows = [i for i in range(12) if i // (12 // tp) == r]
    keep = qrows + list(range(12, 18))
    # Each rank's K/V output gradient is its share (its own q heads' part): the shares add up.
    share = lambda t: torch.cat([t[..., qrows], t[..., 12:] / tp], -1)  # noqa: E731
    compare("gqa qkv", full, gqa, x, to_full_grads=(lambda t: t[..., keep], lambda t: t, share))
    errs["gqa q weight grad"] = _max_err(full.weight.grad[qrows], gqa.weight.grad)
    errs["gqa kv weight grad"] = _max_err(full.weight.grad[12:], gqa.kv_weight.grad)

    V = 2 * tp + 3
    emb = torch.nn.Embedding(V, K, dtype=torch.float64)
    pemb = VocabParallelEmbedding.from_embedding(emb, group=g)
    ids = torch.randint(0, V, (B, T))
    y1, y2 = emb(ids), pemb(ids)
    gy_ = torch.randn(y1.shape, dtype=y1.dtype)
    y1.backward(gy_)
    y2.backward(gy_)
    errs["embedding fwd"] = _max_err(y1.detach(), y2.detach())
    errs["embedding weight grad"] = _max_err(chunk(emb.weight.grad, 0), pemb.weight.grad)

    logits = torch.randn(B * T, V, dtype=torch.float64)
    targets = torch.randint(0, V, (B * T,))
    targets[1] = -100
    l1 = logits.clone().requires_grad_(True)
    l2 = chunk(logits, 1).clone().requires_grad_(True)
    ref = F.cross_entropy(l1, targets, ignore_index=-100)
    got = vocab_parallel_cross_entropy(l2, targets, group=g, vocab_start=chunk_range(V, tp, r)[0])
    ref.backward()
    (got * 1.0).backward()
    errs["cross-entropy fwd"] = _max_err(ref.detach().reshape(1), got.detach().float().reshape(1))
    errs["cross-entropy grad"] = _max_err(chunk(l1.grad, 1), l2.grad)
    return errs


def _span(n, parts, i):
    from fastlm.parallel.tensor.collectives import chunk_range

    lo, hi = chunk_range(n, parts, i)
    return lo, hi - lo


def dropout_checks(rank, world):
    """Replicated-region dropout masks agree over the tp ranks; sharded-region ones (and the default
    generator, used by attention dropout on split heads) differ."""
    import torch.distributed as dist

    from fastlm.parallel import init_mesh
    from fastlm.parallel.tensor import parallelize_tp
    from fastlm.parallel.tensor.collectives import all_gather

    mesh = init_mesh(tp=world)
    model = build("gpt2", dropout=0.5)
    parallelize_tp(model, mesh, sequence_parallel=False, seed=0)
    x = torch.ones(1, 64)
    masks = {}
    for region in ("replicated", "sharded"):
        m = torch.empty(64).bernoulli_(0.5, generator=model.tp_rng.generators[region])
        masks[region] = all_gather(m[None], mesh.tp_group, 0)
    default = all_gather(torch.rand(1, 64), mesh.tp_group, 0)
    out = all_gather(model.blocks[0].mlp.drop.train()(x), mesh.tp_group, 0)  # a replicated-region module
    same = bool((masks["replicated"][0] == masks["replicated"][1]).all()) and bool((out[0] == out[1]).all())
    different = not bool((masks["sharded"][0] == masks["sharded"][1]).all())
    dist.barrier()
    return same, different, not bool((default[0] == default[1]).all())


def round_trip(rank, world, path, mode):
    """save: a tp model saves; plain: one process loads it into a plain model; load: tp loads it back."""
    import torch.distributed as dist

    from fastlm.parallel import init_mesh
    from fastlm.parallel.tensor import parallelize_tp
    from fastlm.parallel.tensor.checkpoint import full_state_dict, load_sharded, save_sharded

    mesh = init_mesh(tp=world) if world > 1 else None
    torch.manual_seed(1 if mode == "save" else 2)  # different weights unless loaded
    from fastlm.models import GPT

    model = GPT(model_config("llama"))
    if mesh is not None:
        parallelize_tp(model, mesh)
    if mode == "save":
        with torch.no_grad():  # seeded per tensor: replicated tensors get the same noise on every rank
            for i, p in enumerate(model.parameters()):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.01)
        save_sharded(f"{path}/ckpt", model)
    else:
        load_sharded(f"{path}/ckpt", model)
    out = full_state_dict(model)
    if dist.is_initialized():
        dist.barrier()
    return out


def lora_dropout_masks(rank, world):
    """{adapted layer: (its dropout's region, the mask it draws for a ones input)} of a GPT-2 with LoRA
    dropout 0.5 split over tp = world (parallelize_tp's generators, in training mode)."""
    from fastlm.nn.lora import apply_lora
    from fastlm.parallel import init_mesh
    from fastlm.parallel.tensor import parallelize_tp

    mesh = init_mesh(tp=world)
    model = build("gpt2")
    apply_lora(model, rank=4, alpha=8.0, dropout=0.5)
    parallelize_tp(model, mesh)
    out = {}
    for name, m in model.named_modules():
        if hasattr(m, "lora_dropout"):
            m.lora_dropout.train()
            out[name] = (m.lora_dropout.region, m.lora_dropout(torch.ones(2, T, 16)) > 0)
    return out
