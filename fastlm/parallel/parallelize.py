"""parallelize: one entry point that applies everything a run configures to a built model.

    pm = parallelize(model, mesh, config)         # mesh: None in a single process
    optimizer = pm.wrap_optimizer(build_optimizer(pm.module, ...))
    _, loss = pm.runner(**inputs)                 # forward (through the data-parallel wrapper)
    pm.clip_grad_norm_(1.0)                       # over every dp / tp / pp rank

In this order: int8 training (SwitchBack linears), tensor (and sequence) parallelism, the
pipeline split, activation checkpointing, torch.compile of the blocks, data parallelism. Each
step is one apply_* function that other trainers can call on their own. `config` is read by
duck typing: `.parallel` (fastlm's [parallel] keys), `.train` (activation_checkpointing, compile,
micro_batch_size, seed), `.model.linear` and `.data.seq_len`; fastlm.train.config.Config has them.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from fastlm.parallel.apply import apply_activation_checkpointing, apply_compile


class ParallelModel:
    """A model with its parallelisms applied, and the step-level operations that depend on them."""

    def __init__(self, module: nn.Module, mesh=None, dp=None, pipe=None, tensor_parallel: bool = False):
        self.module = module    # what this rank optimizes and checkpoints (the model or its pipeline stage)
        self.mesh, self.dp, self.pipe = mesh, dp, pipe
        self.tensor_parallel = tensor_parallel
        self.runner = dp if dp is not None else module  # what a forward calls

    @property
    def sharded(self) -> bool:
        """Checkpoints are sharded (every rank writes its part) under tensor or pipeline parallelism."""
        return self.tensor_parallel or self.pipe is not None

    @property
    def layout(self) -> dict:
        m = self.mesh
        return {"dp": m.dp if m else 1, "tp": m.tp if m else 1, "pp": m.pp if m else 1}

    def no_sync(self, local: bool = True):
        """No gradient communication in this backward (accumulation), when `local`."""
        return self.dp.no_sync() if local and self.dp is not None else nullcontext()

    def finish_grad_sync(self) -> None:
        if self.dp is not None:
            self.dp.finish_grad_sync()  # waits for the buckets' all-reduce (launched during the backward)
        if self.pipe is not None:
            self.pipe.finish_grads()  # a tied embedding's two copies (first and last stage)

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip the whole model's gradient (over every rank that holds a part) to max_norm; returns its norm."""
        if self.pipe is not None:
            return self.pipe.clip_grad_norm_(max_norm)
        if self.tensor_parallel:
            from fastlm.parallel.tensor import clip_grad_norm_

            return clip_grad_norm_(self.module, max_norm, self.mesh, self.dp)
        if self.dp is not None:
            return self.dp.clip_grad_norm_(max_norm)  # also right when the gradients are sharded
        params = [p for p in self.module.parameters() if p.grad is not None]
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer):
        return self.dp.wrap_optimizer(optimizer) if self.dp is not None else optimizer  # ZeRO-1 when sharded

    def mean_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss of the global batch from this rank's part (a collective under pp / dp)."""
        if self.pipe is not None:
            loss = self.pipe.reduce_loss(loss)  # computed on the last stage
        if self.dp is not None:
            loss = self.dp.mean_over_ranks(loss)
        return loss

    def full_model(self, is_main: bool) -> nn.Module | None:
        """A plain one-process model with the whole model's weights, on the main rank (a collective)."""
        if self.pipe is not None:
            return self.pipe.full_model() or self.module
        if not self.tensor_parallel:
            return self.module
        from fastlm.parallel.tensor.checkpoint import full_state_dict, plain_model

        state = full_state_dict(self.module)
        if not is_main:
            return self.module
        plain = plain_model(self.module)
        plain.load_state_dict({k: v.cpu() for k, v in state.items()})
        return plain


def parallelize(model: nn.Module, mesh, config, autocast=None) -> ParallelModel:
    """Apply what `config` asks for to `model` (built the same way on every rank); see the module doc.

    Raises ValueError (naming the config key) when the model and the layout do not fit."""
    p, t = config.parallel, config.train
    if getattr(model, "data_parallel_only", False) and mesh is not None and (mesh.tp > 1 or mesh.pp > 1):
        key, value = ("parallel.tp", mesh.tp) if mesh.tp > 1 else ("parallel.pp", mesh.pp)
        raise ValueError(f"{key} = {value}: {type(model).__name__} trains with data parallelism only "
                         f"(expected {key} = 1)")
    if getattr(config.model, "linear", "default") == "int8_train":
        from fastlm.quant import apply_int8_training

        apply_int8_training(model)
    tensor_parallel = mesh is not None and mesh.tp > 1
    if tensor_parallel:
        model = apply_tensor_parallel(model, mesh, p.sequence_parallel, config.data.seq_len, t.seed)
    pipe = None
    if mesh is not None and mesh.pp > 1:
        from fastlm.parallel.pipeline import Pipeline

        pipe = Pipeline(model, mesh, schedule=p.schedule, virtual_stages=p.virtual_stages,
                        stage_layers=p.stage_layers, balance=p.stage_balance, micro_batch_size=t.micro_batch_size,
                        seq_len=config.data.seq_len, autocast=autocast)
        model = pipe.stage
    privacy = getattr(config, "privacy", None)
    if privacy is not None and privacy.dp_sgd:  # per-sample clipping: the layers (tp shards too) record
        from fastlm.privacy import apply_dp_sgd

        apply_dp_sgd(model)
    if t.activation_checkpointing:
        apply_activation_checkpointing(model)
    if getattr(t, "compile", False):
        apply_compile(model)
    dp = apply_data_parallel(model, mesh, p, find_unused=pipe is not None) if mesh is not None else None
    return ParallelModel(model, mesh, dp, pipe, tensor_parallel)


def apply_tensor_parallel(model: nn.Module, mesh, sequence_parallel: bool, seq_len: int | None,
                          seed: int | None = None) -> nn.Module:
    """parallelize_tp after checking the layout (heads, vocabulary, sequence) divides by tp."""
    from fastlm.parallel.tensor import check_tp_layout, parallelize_tp

    if not hasattr(model, "config"):
        raise ValueError(f"parallel.tp = {mesh.tp}: {type(model).__name__} cannot be split over tensor-parallel "
                         f"ranks (fastlm GPT and encoder models can)")
    check_tp_layout(model.config, mesh.tp, sequence_parallel, seq_len)
    try:
        return parallelize_tp(model, mesh, sequence_parallel=sequence_parallel, seed=seed)
    except TypeError as e:
        raise ValueError(f"parallel.tp = {mesh.tp}: {e}") from None


def apply_data_parallel(model: nn.Module, mesh, parallel, find_unused: bool = False):
    """DataParallel over mesh.dp_group with the [parallel] options (None when dp = 1).

    find_unused: a pipeline stage's last backward may cover one chunk only (interleaved schedules)."""
    if mesh.dp == 1:
        return None
    from fastlm.parallel.data_parallel import DataParallel

    # Every rank built the model from the same seed: DataParallel checks the weights agree.
    return DataParallel(model, mesh, bucket_mb=parallel.bucket_mb, shard_optimizer=parallel.shard_optimizer,
                        grad_reduce_dtype=None if parallel.grad_reduce_dtype == "fp32" else parallel.grad_reduce_dtype,
                        shares=parallel.fixed_shares, find_unused=find_unused)
