"""Checkpoints of tensor-parallel models that reshard: any (dp, tp) saves, any (dp, tp) loads.

What is stored are the *canonical* tensors: those of the plain (tp = 1) model, with fused
projections split into their parts (`blocks.0.attn.qkv.weight[q]`, `[k]`, `[v]`,
`blocks.0.mlp.fc.weight[gate]`, `[up]`), since a tp rank's shard of a fused weight is not a
slice of it ([q_i | k_i | v_i]). Sharded save/load goes through torch.distributed.checkpoint
(DCP) with DTensors over the tp group, stored as safetensors files (one per rank, with DCP's
offsets in their JSON header: nothing is unpickled to load them). Replicated tensors are written
once (DCP de-duplicates them over the ranks).

    full_state_dict(model)                  plain model's state dict, gathered over tp (a collective)
    load_full_state_dict(model, sd)         a plain state dict into a tp (or plain) model
    save_sharded(path, model, opt_state)    DCP save (every rank), load_sharded(path, model) to load
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from fastlm.parallel.tensor.collectives import all_gather
from fastlm.parallel.tensor.layout import Part, canonical_key, split_parts

MODEL, OPTIM = "model.", "optim."


def _plain_parts(model: nn.Module, name: str, p: torch.Tensor) -> list[Part]:
    """The canonical parts of a parameter of a plain (not tensor-parallel) model."""
    from fastlm.nn import MLP, Attention

    module_name, _, kind = name.rpartition(".")
    parent_name, _, attr = module_name.rpartition(".")
    parent = model.get_submodule(parent_name) if module_name else None
    if kind == "lora_A":  # (rank, in): a LoRA A is shared by the fused parts (their B rows are split)
        parent = None
    if isinstance(parent, Attention) and attr == "qkv":
        q, kv = parent.n_head * parent.head_dim, parent.n_kv_head * parent.head_dim
        return split_parts([("q", q), ("k", kv), ("v", kv)], kind, 0, 1, 0)
    if isinstance(parent, MLP) and attr == "fc" and parent.gated:
        return split_parts([("gate", parent.d_ff), ("up", parent.d_ff)], kind, 0, 1, 0)
    n = p.shape[0] if p.dim() else 1
    return [Part(kind, 0, 0, n, 0, n)]


def entries(model: nn.Module) -> list[tuple[str, str, torch.Tensor, Part]]:
    """(canonical key, parameter name, parameter, part) for every piece this rank holds (tied once);
    also the buffers of a LoRA int8 base (its int8 weight, scales and bias: frozen, not parameters)."""
    out = []
    for name, p in [*model.named_parameters(), *_int8_base_buffers(model)]:
        parts = getattr(p, "_tp_parts", None) or _plain_parts(model, name, p)
        out += [(canonical_key(name, part), name, p, part) for part in parts]
    return out


def _int8_base_buffers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    from fastlm.nn.lora import Int8LoRALinear

    return [(f"{module_name}.{kind}", getattr(m, kind)) for module_name, m in model.named_modules()
            if isinstance(m, Int8LoRALinear) for kind in ("weight", "weight_scale", "bias")
            if getattr(m, kind) is not None]


def _local(t: torch.Tensor, part: Part) -> torch.Tensor:
    return t.narrow(part.dim, part.local_start, part.local_len) if t.dim() else t


def _global_shape(t: torch.Tensor, part: Part) -> list[int]:
    shape = list(t.shape)
    if shape:
        shape[part.dim] = part.global_len
    return shape


def _fused(model: nn.Module) -> dict[str, list[str]]:
    """plain parameter name -> its canonical parts in order (for fused parameters only)."""
    fused: dict[str, list[str]] = {}
    for key, _, _, _ in entries(model):
        if key.endswith("]"):
            fused.setdefault(key[:key.rindex("[")], []).append(key)
    return fused


def _plain_keys(model: nn.Module) -> list[str]:
    """The plain model's state-dict keys (tied weights under their first name; see tied_aliases)."""
    keys = []
    for key, _, _, _ in entries(model):
        base = key[:key.rindex("[")] if key.endswith("]") else key
        if base not in keys:
            keys.append(base)
    return keys


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """{other name: first name} of every parameter registered under several names (a tied LM head
    or MLM decoder: `lm_head.weight` -> `tok_emb.weight`, `mlm_head.decoder.weight` -> `encoder.tok_emb.weight`)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def plain_model(model: nn.Module, device=None, adapted: list[str] | None = None) -> nn.Module:
    """A new plain (tp = 1) model of the same kind and architecture as `model` (GPT or EncoderForMaskedLM;
    also a pipeline stage of one: the whole model), with LoRA adapters where `model` has them (adapted:
    the layers to adapt instead, a pipeline's from every stage)."""
    from fastlm.models import GPT, EncoderForMaskedLM
    from fastlm.nn.lora import adapt_like

    if isinstance(model, EncoderForMaskedLM):
        plain = EncoderForMaskedLM(model.config, sentence_order=model.sentence_order)
    elif isinstance(model, GPT):
        plain = GPT(model.config)
    else:
        raise TypeError(f"plain_model: expected a fastlm GPT or EncoderForMaskedLM, got {type(model).__name__}")
    return adapt_like(plain, model, adapted).to(device)


@torch.no_grad()
def canonical_state(model: nn.Module, tensors=None) -> dict[str, torch.Tensor]:
    """Full canonical tensors, gathered over the tp ranks (collective when tp > 1).

    tensors: {parameter name: tensor shaped like it} to gather instead of the parameters (optimizer state)."""
    group = getattr(model, "tp_group", None)
    out: dict[str, torch.Tensor] = {}
    for key, name, p, part in entries(model):
        t = p if tensors is None else tensors.get(name)
        if t is None:
            continue
        piece = _local(t.detach(), part)
        out[key] = all_gather(piece, group, part.dim, part.global_len) if part.sharded else piece.clone()
    return out


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain (GPT or encoder) state dict of a tp model, tied weights under each name (every rank
    gets it; a collective)."""
    canon = canonical_state(model)
    fused = _fused(model)
    out = {}
    for key in _plain_keys(model):
        if key in fused:
            out[key] = torch.cat([canon[k] for k in fused[key]], dim=0)
        elif key in canon:
            out[key] = canon[key]
    for alias, name in tied_aliases(model).items():
        out[alias] = out[name]
    return {k: v.contiguous() for k, v in out.items()}


def split_plain(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plain state dict -> canonical tensors (fused weights cut into their parts)."""
    canon, sizes = {}, {}
    for key, _, _, part in entries(model):
        sizes[key] = part.global_len
    fused = _fused(model)
    for base, keys in fused.items():
        if base not in sd:  # load_canonical names the missing part (optimizer state: frozen weights have none)
            continue
        offset = 0
        for k in keys:
            canon[k] = sd[base].narrow(0, offset, sizes[k])
            offset += sizes[k]
        if offset != sd[base].shape[0]:
            raise ValueError(f"{base} has {sd[base].shape[0]} rows, the model's parts {offset}")
    for k, v in sd.items():
        if k not in fused:
            canon[k] = v
    return canon


@torch.no_grad()
def load_canonical(model: nn.Module, canon: dict[str, torch.Tensor], tensors=None) -> None:
    """Copy this rank's slices of full canonical tensors into the parameters (or into `tensors`, for the
    parameters it names)."""
    for key, name, p, part in entries(model):
        if tensors is not None and name not in tensors:
            continue
        if key not in canon:
            raise KeyError(f"the checkpoint lacks {key}")
        full = canon[key]
        want = _global_shape(p, part)
        if list(full.shape) != want:
            raise ValueError(f"{key}: the checkpoint has shape {tuple(full.shape)}, this model {tuple(want)}")
        target = p if tensors is None else tensors[name]
        src = full.narrow(part.dim, part.global_offset, part.local_len) if full.dim() else full
        _local(target, part).copy_(src.to(target.dtype))


def load_full_state_dict(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Load a plain GPT state dict (e.g. from model.safetensors) into a tp or plain model."""
    load_canonical(model, split_plain(model, sd))


# ---------------------------------------------------------------- DCP (sharded) save / load

def _device_mesh(model: nn.Module):
    from torch.distributed.device_mesh import DeviceMesh

    group = getattr(model, "tp_group", None)
    if group is None or dist.get_world_size(group) == 1:
        return None
    device = next(model.parameters()).device.type
    cache = model.__dict__.setdefault("_tp_device_mesh", {})
    if device not in cache:
        cache[device] = DeviceMesh.from_group(group, device)
    return cache[device]


def _sharded_view(t: torch.Tensor, part: Part, mesh):
    """A DTensor (Shard(dim) over the tp group) for a sharded piece, the plain tensor otherwise."""
    from torch.distributed.tensor import DTensor, Shard

    local = _local(t, part)
    if not part.sharded:
        return local
    shape = _global_shape(t, part)
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(local.contiguous(), mesh, [Shard(part.dim)], run_check=False, shape=torch.Size(shape), stride=stride)


def sharded_state(model: nn.Module, optim_state: dict[str, dict[str, torch.Tensor]] | None = None) -> dict:
    """The DCP state dict: model.<canonical key> (and optim.<canonical key>.<state> for tensors
    shaped like their parameter) as DTensors where sharded."""
    mesh = _device_mesh(model)
    out = {}
    for key, name, p, part in entries(model):
        out[MODEL + key] = _sharded_view(p.detach(), part, mesh)
        for sname, t in (optim_state or {}).get(name, {}).items():
            out[f"{OPTIM}{key}.{sname}"] = _sharded_view(t.detach(), part, mesh)
    return out


def save_sharded(path: str | Path, model: nn.Module, optim_state=None) -> None:
    """Every rank writes its shards into directory `path` (a collective when distributed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    state = sharded_state(model, optim_state)
    distributed = dist.is_available() and dist.is_initialized()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(state, storage_writer=HuggingFaceStorageWriter(str(path), save_distributed=distributed),
                 no_dist=not distributed)


def load_sharded(path: str | Path, model: nn.Module, optim_state=None, optim_names: list[str] | None = None) -> None:
    """Load a checkpoint saved by save_sharded (at any tp / dp) into this rank's model and, for the
    parameters named in optim_state ({name: {state: tensor}}), their optimizer state, in place."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.tensor import DTensor

    distributed = dist.is_available() and dist.is_initialized()
    targets = sharded_state(model, optim_state)
    # Load into fresh tensors, then copy into the parameters / state (views are not reliably written).
    fresh = {k: (DTensor.from_local(torch.empty_like(v.to_local()), v.device_mesh, v.placements, run_check=False,
                                    shape=v.shape, stride=v.stride()) if isinstance(v, DTensor)
                 else torch.empty_like(v)) for k, v in targets.items()}
    with warnings.catch_warnings():  # one process: DCP warns that it assumes so
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(fresh, storage_reader=HuggingFaceStorageReader(str(path)), no_dist=not distributed)
    by_key = {}
    for key, name, p, part in entries(model):
        by_key[MODEL + key] = (p, part)
        for sname, t in (optim_state or {}).get(name, {}).items():
            by_key[f"{OPTIM}{key}.{sname}"] = (t, part)
    with torch.no_grad():
        for k, v in fresh.items():
            t, part = by_key[k]
            _local(t, part).copy_(v.to_local() if isinstance(v, DTensor) else v)


def saved_keys(path: str | Path) -> set[str]:
    """The tensor names a save_sharded checkpoint holds (read from the safetensors headers)."""
    from safetensors import safe_open

    keys = set()
    for f in Path(path).glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as h:
            keys.update(h.keys())
    return keys
