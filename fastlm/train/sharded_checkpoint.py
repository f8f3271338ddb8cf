"""Checkpoints of tensor-parallel runs (parallel.tp > 1): every rank writes its shards.

RUN_DIR/checkpoints/step_0000100/ (written to a temporary name by all ranks, renamed by rank 0):

    dcp/*.safetensors    model and optimizer tensors, sharded with torch.distributed.checkpoint
                         (canonical tensors: see fastlm.parallel.tensor.checkpoint); one file per rank
    rank00000.pt ...     each rank's RNG states (torch, python, its dropout generators)
    state.pt             step, loss scaler, data loader position, optimizer hyperparameters
    trainer_state.json   format "dcp", step, layout (dp, tp), the model config and data key, and
                         every file's size and sha256

Such a checkpoint loads at any (dp, tp), also tp = 1 and one process; a tp run also resumes
from a tp = 1 checkpoint (model.safetensors + optimizer.pt). Resuming at the same layout is
exact (each rank gets its own RNG states back); at another layout the dropout generators start
afresh. The .pt files hold only tensors and plain containers (torch.load(weights_only=True)).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from fastlm.parallel.tensor import checkpoint as tpc
from fastlm.privacy.encryption import refuse_encrypted
from fastlm.train.checkpoint import _rng_state, _set_rng_state, seal_checkpoint, verify_checkpoint
from fastlm.train.errors import CheckpointError

FORMAT = "dcp"
DCP_DIR = "dcp"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def is_sharded_checkpoint(path: Path) -> bool:
    try:
        return json.loads((Path(path) / "trainer_state.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------- optimizer state by parameter name

def optimizer_state_by_name(model, optimizer) -> tuple[dict[str, dict[str, torch.Tensor]], float | None, list]:
    """({param name: {state: tensor shaped like the param}}, Adam's step, param-group hyperparameters).
    A ZeRO-1 optimizer (DataParallel shard_optimizer) gathers its shards first (a collective)."""
    params = dict(model.named_parameters())
    out: dict[str, dict[str, torch.Tensor]] = {}
    step = None
    if hasattr(optimizer, "full_state_dict"):
        full = optimizer.full_state_dict()
        groups = full["shards"][0]["param_groups"]
        for shard in full["shards"]:
            for k, (name, lo, hi) in enumerate(shard["segments"]):
                for key, v in shard["state"].get(k, {}).items():
                    if key == "step" or not torch.is_tensor(v) or v.dim() != 1:
                        step = float(v) if key == "step" else step
                        continue
                    p = params[name]
                    t = out.setdefault(name, {}).get(key)
                    if t is None:
                        t = out[name][key] = torch.zeros(p.numel(), dtype=v.dtype, device=p.device)
                    t[lo:hi] = v.to(p.device)
        out = {n: {k: v.view_as(params[n]) for k, v in st.items()} for n, st in out.items()}
        return out, step, groups
    names = {id(p): n for n, p in params.items()}
    for p, st in optimizer.state.items():
        for key, v in st.items():
            if key == "step":
                step = float(v)
            elif torch.is_tensor(v) and v.shape == p.shape:
                out.setdefault(names[id(p)], {})[key] = v
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return out, step, groups


def load_optimizer_state_by_name(model, optimizer, state: dict[str, dict[str, torch.Tensor]], step, groups) -> None:
    """The inverse of optimizer_state_by_name (state holds this rank's local tensors)."""
    params = dict(model.named_parameters())
    if hasattr(optimizer, "full_state_dict"):
        from fastlm.parallel.zero import ShardedOptimizer

        segs, st = [], {}
        for k, (name, tensors) in enumerate(state.items()):
            segs.append((name, 0, params[name].numel()))
            st[k] = {key: v.detach().reshape(-1).cpu() for key, v in tensors.items()}
            st[k]["step"] = torch.tensor(step)
        optimizer.load_state_dict({"format": ShardedOptimizer.FORMAT,
                                   "shards": [{"segments": segs, "state": st, "param_groups": groups}]})
        return
    sd = optimizer.state_dict()
    names = {id(p): n for n, p in params.items()}
    flat = [p for g in optimizer.param_groups for p in g["params"]]
    sd["state"] = {i: {"step": torch.tensor(step), **state[names[id(p)]]}
                   for i, p in enumerate(flat) if names[id(p)] in state}
    if len(groups) == len(sd["param_groups"]):
        for g, saved in zip(sd["param_groups"], groups):
            g.update({k: v for k, v in saved.items() if k != "params"})
    optimizer.load_state_dict(sd)


# ---------------------------------------------------------------- save

def save_sharded_checkpoint(run_dir: Path, step: int, model, optimizer, scaler, loader, identity: dict,
                            keep: int, layout: dict) -> Path:
    """Every rank calls this (collective). Returns the checkpoint directory."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-{final.name}-sharded"
    rank, main = _rank(), _rank() == 0
    opt_state, opt_step, groups = optimizer_state_by_name(model, optimizer)
    if main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    error = None
    try:
        tpc.save_sharded(tmp / DCP_DIR, model, opt_state)
        tracker = getattr(model, "tp_rng", None)
        torch.save({"rng": _rng_state(), "tp_rng": tracker.state_dict() if tracker is not None else None},
                   tmp / f"rank{rank:05d}.pt")
        if main:
            torch.save({"step": step, "scaler": scaler.state_dict() if scaler is not None else None,
                        "loader": loader.state_dict(), "optimizer_step": opt_step, "param_groups": groups},
                       tmp / "state.pt")
    except BaseException as e:  # noqa: BLE001  (every rank must reach the barrier)
        error = e
    _barrier()
    if error is not None:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise error
    if main:
        files = sorted(str(f.relative_to(tmp)) for f in tmp.rglob("*") if f.is_file())
        seal_checkpoint(tmp, final, {"format": FORMAT, "step": step, "layout": layout, **identity}, files,
                        run_dir, keep)
    _barrier()
    return final


# ---------------------------------------------------------------- load

def load_sharded_checkpoint(path: Path, model, optimizer, scaler, loader, identity: dict, device,
                            layout: dict) -> int:
    """Restore a checkpoint of either format into this rank's (tp or plain) model; returns the step."""
    path = Path(path)
    if not is_sharded_checkpoint(path):
        return _load_plain_into_tp(path, model, optimizer, scaler, loader, identity, device)
    info = verify_checkpoint(path, identity, format=FORMAT, required=None)
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        names = {k.rsplit(".", 1)[1] for k in tpc.saved_keys(path / DCP_DIR) if k.startswith(tpc.OPTIM)}
        opt_state = {n: {s: torch.zeros_like(p) for s in sorted(names)}
                     for n, p in model.named_parameters() if p.requires_grad} if names else {}  # LoRA: no frozen
        tpc.load_sharded(path / DCP_DIR, model, opt_state)
        if opt_state:
            load_optimizer_state_by_name(model, optimizer, opt_state, state["optimizer_step"], state["param_groups"])
        same_layout = info.get("layout") == layout
        mine = path / f"rank{_rank() if same_layout else 0:05d}.pt"
        ranks = torch.load(mine, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} does not fit this run: {first_line}") from None
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    loader.load_state_dict(state["loader"])
    _set_rng_state(ranks["rng"])
    tracker = getattr(model, "tp_rng", None)
    if same_layout and tracker is not None and ranks.get("tp_rng"):
        tracker.load_state_dict(ranks["tp_rng"])
    return int(state["step"])


def _load_plain_into_tp(path: Path, model, optimizer, scaler, loader, identity: dict, device) -> int:
    """A tp = 1 checkpoint (model.safetensors + optimizer.pt) into a tensor-parallel model."""
    import safetensors.torch

    verify_checkpoint(path, identity)
    refuse_encrypted(path / "model.safetensors")  # encryption is refused with tp > 1 (config checks)
    try:
        full = safetensors.torch.load_file(str(path / "model.safetensors"), device="cpu")
        for alias, name in tpc.tied_aliases(model).items():  # save_model keeps one name of a tied pair
            for a, b in ((alias, name), (name, alias)):
                if a not in full and b in full:
                    full[a] = full[b]
        tpc.load_full_state_dict(model, full)
        saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        # Name the saved optimizer's parameter indices with a plain model's parameter order.
        with torch.device("meta"):
            plain = tpc.plain_model(model)
        from fastlm.train.optim import build_optimizer

        plain_opt = build_optimizer(plain, _NoDecay(), torch.device("cpu"))
        names = {id(p): n for n, p in plain.named_parameters()}
        order = [names[id(p)] for g in plain_opt.param_groups for p in g["params"]]
        by_plain: dict[str, dict[str, torch.Tensor]] = {}
        step = None
        for i, st in saved["state"].items():
            for key, v in st.items():
                if key == "step":
                    step = float(v)
                else:
                    by_plain.setdefault(key, {})[order[int(i)]] = v
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # LoRA: the adapters
        opt_state = {n: {} for n, _ in trainable}
        for key, sd in by_plain.items():
            local = {n: torch.zeros_like(p) for n, p in trainable}
            if "lm_head.weight" not in sd and "tok_emb.weight" in sd:
                sd["lm_head.weight"] = sd["tok_emb.weight"]
            tpc.load_canonical(model, tpc.split_plain(model, sd), tensors=local)
            for n, t in local.items():
                opt_state[n][key] = t
        groups = [{k: v for k, v in g.items() if k != "params"} for g in saved["param_groups"]]
        load_optimizer_state_by_name(model, optimizer, opt_state, step, groups)
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} does not fit this run: {first_line}") from None
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    loader.load_state_dict(state["loader"])
    _set_rng_state(state["rng"])
    return int(state["step"])


class _NoDecay:
    """The TrainSection fields build_optimizer reads (only the parameter grouping matters here)."""
    weight_decay = 0.0
    lr = 1e-3
    optimizer = "adamw"  # the grouping is the same for every optimizer
    momentum = 0.0
