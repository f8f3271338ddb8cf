"""The pipeline of one rank: its stage, its schedule, and the step-level pieces around them.

    pipe = Pipeline(model, mesh, schedule="1f1b", micro_batch_size=8, seq_len=128)
    stage = pipe.stage                        # this rank's part of the model (the same class, pruned)
    loss = pipe.train_step(micro_batches)     # forward + backward of every micro-batch (the schedule)
    pipe.finish_grads()                       # tied embedding copies: gradients summed
    norm = pipe.clip_grad_norm_(1.0)          # over the whole model (every stage)
    pipe.reduce_loss(loss)                    # the loss (computed on the last stage) on every rank

Data parallelism wraps `pipe.stage` over the stage's dp group (mesh.dp_group); the pipeline's
collectives use the pp group, and the tied-embedding sum a group of each pipeline's first and last
rank, so every (dp, tp) coordinate runs its own pipeline.
"""
from __future__ import annotations

import datetime

import torch
import torch.distributed as dist
from torch import nn

from fastlm.parallel.mesh import Mesh, record_collective, wait_work
from fastlm.parallel.pipeline.executor import PipelineExecutor
from fastlm.parallel.pipeline.schedules import check_layout, make_schedule
from fastlm.parallel.pipeline.split import (
    BALANCES,
    PipelineStage,
    check_stage_layers,
    layers_of,
    measured_costs,
    param_costs,
    partition_layers,
    stage_ranks,
)


def plan_stage_layers(model: nn.Module, num_stages: int, balance: str = "params", stage_layers: list[int] | None = None,
                      micro_batch_size: int = 1, seq_len: int = 128) -> list[int]:
    """Layers per stage: the explicit list, or balanced by parameter count or by measured time.

    balance="time" measures on this rank; under torch.distributed every rank takes rank 0's numbers."""
    n = len(layers_of(model))
    if num_stages > n:
        raise ValueError(f"pipeline: pp x virtual_stages = {num_stages} stages but model.n_layer = {n}; every "
                         f"stage needs at least one layer (use at most {n} stages)")
    if stage_layers is not None:
        check_stage_layers(list(stage_layers), n, num_stages)
        return list(stage_layers)
    if balance not in BALANCES:
        raise ValueError(f"pipeline balance {balance!r}: expected one of {', '.join(BALANCES)}")
    if balance == "params":
        per_layer, first, last = param_costs(model)
    else:
        per_layer, first, last = measured_costs(model, micro_batch_size, seq_len)
        if dist.is_initialized() and dist.get_world_size() > 1:
            numbers = [per_layer + [first, last]]
            dist.broadcast_object_list(numbers, src=0)
            per_layer, (first, last) = numbers[0][:-2], numbers[0][-2:]
    return partition_layers(per_layer, num_stages, first, last)


class Pipeline:
    def __init__(self, model: nn.Module, mesh: Mesh, *, schedule: str = "1f1b", virtual_stages: int = 1,
                 stage_layers: list[int] | None = None, balance: str = "params", micro_batch_size: int = 1,
                 seq_len: int | None = None, autocast=None):
        if mesh.pp < 2:
            raise ValueError("Pipeline needs a mesh with pp >= 2 (one process per stage)")
        if mesh.tp > 1 and getattr(model, "tp_size", 1) != mesh.tp:
            raise ValueError(f"Pipeline: the mesh has tp = {mesh.tp}: apply parallelize_tp(model, mesh) before "
                             f"splitting the model into pipeline stages")
        check_layout(schedule, mesh.pp, mesh.pp, virtual_stages)  # the schedule's name and v (m: at each step)
        self.mesh = mesh
        self.schedule = schedule
        self.virtual_stages = virtual_stages
        self.pp, self.pp_rank = mesh.pp, mesh.pp_rank
        self.group = mesh.pp_group
        self.pp_ranks = dist.get_process_group_ranks(self.group)
        seq_len = seq_len or model.config.max_seq_len
        num_stages = mesh.pp * virtual_stages
        self.stage_layers = plan_stage_layers(model, num_stages, balance, stage_layers, micro_batch_size, seq_len)
        self.plan = PipelineStage(model, self.stage_layers, stage_ranks(num_stages, mesh.pp)[mesh.pp_rank])
        self.stage = self.plan.module  # what this rank optimizes and checkpoints
        self.stages = self.plan.stages
        self.embedding_group = self._embedding_group(mesh) if self.plan.tied else None
        # Every rank of the pipeline meets once before any point-to-point transfer (NCCL sets up its
        # communicator in the first collective of a group).
        record_collective("barrier (pipeline start)")
        dist.barrier(group=self.group)
        dtype = next(model.parameters()).dtype
        # The residual stream between stages; sequence parallel keeps 1/tp of every sequence on each rank.
        local_seq = seq_len // mesh.tp if getattr(model, "sequence_parallel", False) else seq_len
        self.executor = PipelineExecutor(self.plan, self.pp_rank, self.pp_ranks, self.group,
                                         (micro_batch_size, local_seq, model.config.d_model), dtype, mesh.device,
                                         autocast=autocast)

    @staticmethod
    def _embedding_group(mesh: Mesh):
        """A group of the first and the last rank of this pipeline (every rank creates every such group)."""
        mine = None
        for d in range(mesh.dp):
            for t in range(mesh.tp):
                ranks = [(0 * mesh.dp + d) * mesh.tp + t, ((mesh.pp - 1) * mesh.dp + d) * mesh.tp + t]
                group = dist.new_group(ranks, timeout=datetime.timedelta(seconds=mesh.timeout_s))
                if mesh.rank in ranks:
                    mine = group
        return mine

    # ------------------------------------------------------------------ a training step

    def actions(self, num_microbatches: int):
        return make_schedule(self.schedule, self.pp, num_microbatches, self.pp_rank, self.virtual_stages)

    def train_step(self, micro_batches: list, grad_scale=None, no_sync=None) -> torch.Tensor:
        """Forward + backward of the micro-batches; returns this rank's part of the mean loss (detached).

        no_sync: DataParallel.no_sync when the stage is data parallel (gradients are reduced in the
        rank's last backward; DataParallel needs find_unused=True with interleaving, whose last
        backward covers one chunk only). Then call its finish_grad_sync(), then finish_grads()."""
        self.executor.grad_scale = grad_scale
        return self.executor.run(self.actions(len(micro_batches)), micro_batches, no_sync=no_sync)

    def finish_grads(self) -> None:
        """Sum the gradients of the two copies of a tied embedding (first and last stage)."""
        weight = self.plan.tied_weight()
        if weight is None:
            return
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        record_collective("all_reduce of the tied embedding gradient")
        wait_work(dist.all_reduce(weight.grad, group=self.embedding_group, async_op=True),
                  "all_reduce of the tied embedding gradient", self.pp_ranks)

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip by the norm of the whole model's gradient (each parameter counted once); returns it."""
        duplicate = self.plan.tied_weight() if self.plan.has_last else None  # the first stage counts it
        all_grads = [p.grad for p in self.stage.parameters() if p.grad is not None]
        counted = [p.grad for p in self.stage.parameters() if p.grad is not None and p is not duplicate
                   and self._counted_here(p)]
        sq = torch.zeros((), device=self.mesh.device, dtype=torch.float32)
        if counted:
            sq = torch.stack([torch.linalg.vector_norm(g.float()) for g in counted]).pow(2).sum()
        for group, ranks in ((self.mesh.tp_group, None), (self.group, self.pp_ranks)):
            if group is None or dist.get_world_size(group) == 1:
                continue
            record_collective("all_reduce of the gradient norm (pipeline)")
            wait_work(dist.all_reduce(sq, group=group, async_op=True), "all_reduce of the gradient norm", ranks)
        total = sq.sqrt()
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        if all_grads:
            torch._foreach_mul_(all_grads, coef)
        return total

    def _counted_here(self, p: torch.Tensor) -> bool:
        """Tensor parallel: a tp-split parameter counts on every tp rank, a replicated one on tp rank 0."""
        if self.mesh.tp == 1 or self.mesh.tp_rank == 0:
            return True
        from fastlm.parallel.tensor.parallelize import is_tp_sharded

        return is_tp_sharded(p)

    def reduce_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss computed on the last stage, on every rank of the pipeline."""
        out = loss.detach().clone()
        record_collective("all_reduce of the loss (pipeline)")
        wait_work(dist.all_reduce(out, group=self.group, async_op=True), "all_reduce of the loss", self.pp_ranks)
        return out

    # ------------------------------------------------------------------ evaluation and saving

    @torch.no_grad()
    def evaluate(self, batches: list, autocast=None) -> dict:
        """trainer.evaluate for a pipeline: mean loss over the batches, the same on every rank."""
        import math

        if not batches:
            raise ValueError("no validation batches: the validation split is shorter than one sequence")
        was_training = self.stage.training
        self.stage.eval()
        if autocast is not None:
            self.executor.autocast = autocast
        total = torch.zeros((), device=self.mesh.device)
        for x in batches:
            total += self.executor.forward_only(x)
        self.stage.train(was_training)
        val_loss = float(self.reduce_loss(total)) / len(batches)
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0))}

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's state dict on the pipeline's first rank (None on the others): a collective."""
        if self.mesh.tp > 1:  # the plain weights of this stage, gathered over the tp ranks
            from fastlm.parallel.tensor.checkpoint import full_state_dict

            mine = {k: v.detach().cpu() for k, v in full_state_dict(self.stage).items()}
        else:
            mine = {k: v.detach().cpu() for k, v in self.stage.state_dict().items()}
        gathered = [None] * self.pp if self.pp_rank == 0 else None
        record_collective("gather_object of the stages' weights")
        dist.gather_object(mine, gathered, dst=self.pp_ranks[0], group=self.group)
        if self.pp_rank != 0:
            return None
        full: dict = {}
        for part in gathered:
            full.update(part)
        return full

    def full_model(self) -> nn.Module | None:
        """A one-process model with every stage's weights, on the pipeline's first rank (None elsewhere)."""
        from fastlm.parallel.tensor.checkpoint import plain_model, tied_aliases

        state = self.full_state_dict()
        if state is None:
            return None
        lora = [k[:-len(".lora_A")] for k in state if k.endswith(".lora_A")]  # every stage's adapted layers
        model = plain_model(self.stage, adapted=lora)
        for alias, name in tied_aliases(model).items():  # a tied weight comes under the name its stage held
            for a, b in ((alias, name), (name, alias)):
                if a not in state and b in state:
                    state[a] = state[b]
        model.load_state_dict(state, strict=True)
        return model

