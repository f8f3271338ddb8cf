"""Run a schedule on one pipeline rank: forward/backward of each action, activations and gradients
sent point to point with batched isend/irecv.

    executor = PipelineExecutor(stage, pp_rank, pp_ranks, group, act_shape, dtype, device)
    loss = executor.run(actions, micro_batches, num_microbatches)    # a training step's forward + backward

The activation shape (micro_batch_size, seq_len, d_model) and dtype are fixed for a run, so every
receive buffer is allocated from them: no shape handshake per step. Before each action one
batch_isend_irecv posts the sends the previous action produced together with the receive this
action needs; sends are waited on at the end of the step, receives right before use (the time
spent there is the rank's measured idle time, `wait_s`). Every message has a tag that names its
kind, micro-batch and stage, so messages between a pair of ranks cannot be confused (gloo matches
by tag).
"""
from __future__ import annotations

import time
from contextlib import nullcontext

import torch
import torch.distributed as dist

from fastlm.data.inputs import model_inputs
from fastlm.parallel.mesh import record_collective, wait_work
from fastlm.parallel.pipeline.schedules import Action, rank_chunk_of, stage_of
from fastlm.parallel.pipeline.split import PipelineStage


class PipelineExecutor:
    def __init__(self, stage: PipelineStage, pp_rank: int, pp_ranks: list[int], group, act_shape: tuple,
                 dtype: torch.dtype, device: torch.device, autocast=None, grad_scale=None):
        self.stage = stage
        self.pp = len(pp_ranks)
        self.pp_rank = pp_rank
        self.pp_ranks = pp_ranks       # global ranks of this pipeline, by stage order
        self.group = group
        self.act_shape = tuple(act_shape)
        self.dtype = dtype
        self.device = device
        self.autocast = autocast if autocast is not None else nullcontext()
        self.grad_scale = grad_scale   # e.g. a GradScaler's scale() for the loss, or None
        self.num_stages = stage.num_stages
        self.peak_live = 0             # most micro-batch activations held at once in the last run
        self.wait_s = 0.0              # time spent waiting for receives in the last run
        self.compute_s = 0.0
        self._sends: list = []         # P2POps produced by the last action, not yet posted
        self._send_works: list = []

    # ------------------------------------------------------------------ point to point

    def _tag(self, kind: str, microbatch: int, stage: int) -> int:
        return (microbatch * self.num_stages + stage) * 2 + (kind == "grad")

    def _peer_of(self, stage: int) -> int:
        return self.pp_ranks[rank_chunk_of(stage, self.pp)[0]]

    def _queue_send(self, tensor: torch.Tensor, to_stage: int, kind: str, microbatch: int, stage: int) -> None:
        tensor = tensor.detach().to(self.dtype).contiguous()
        self._sends.append(dist.P2POp(dist.isend, tensor, self._peer_of(to_stage), self.group,
                                      self._tag(kind, microbatch, stage)))

    def _exchange(self, recv_from_stage: int | None = None, kind: str = "", microbatch: int = 0,
                  stage: int = 0) -> torch.Tensor | None:
        """Post the queued sends and (optionally) one receive in one batch; wait for the receive."""
        ops, buffer = self._sends, None
        self._sends = []
        if recv_from_stage is not None:
            buffer = torch.empty(self.act_shape, dtype=self.dtype, device=self.device)
            ops = ops + [dist.P2POp(dist.irecv, buffer, self._peer_of(recv_from_stage), self.group,
                                    self._tag(kind, microbatch, stage))]
        if not ops:
            return None
        record_collective(f"pipeline p2p ({kind or 'send'} of micro-batch {microbatch})")
        works = dist.batch_isend_irecv(ops)
        n_send = len(ops) - (buffer is not None)
        self._send_works += works[:n_send]
        if buffer is not None:
            t0 = time.perf_counter()
            wait_work(works[-1], f"pipeline receive of the {kind} of micro-batch {microbatch} for stage {stage}",
                      self.pp_ranks)
            self.wait_s += time.perf_counter() - t0
        return buffer

    def _finish_sends(self) -> None:
        self._exchange()
        t0 = time.perf_counter()
        for w in self._send_works:
            wait_work(w, "pipeline send", self.pp_ranks)
        self.wait_s += time.perf_counter() - t0
        self._send_works = []

    # ------------------------------------------------------------------ one training step

    def run(self, actions: list[Action], micro_batches: list, loss_divisor: int | None = None,
            no_sync=None) -> torch.Tensor:
        """Forward and backward of every micro-batch in `actions`' order; gradients accumulate in
        the stage's parameters. Returns the sum of the micro-batch losses / loss_divisor (last
        stage; zero elsewhere), detached.

        no_sync: a data-parallel wrapper's no_sync (a context manager factory): every action but the
        last backward runs inside it, so gradients are reduced once, during the last backward."""
        m = len(micro_batches)
        divisor = loss_divisor or m
        inputs: dict = {}    # (mb, chunk) -> received activation (requires grad) or None
        outputs: dict = {}   # (mb, chunk) -> output (or loss) kept for the backward
        total = torch.zeros((), device=self.device)
        self.peak_live = 0
        self.wait_s = self.compute_s = 0.0
        start = time.perf_counter()
        last_backward = max(i for i, a in enumerate(actions) if a.kind == "B")
        for i, a in enumerate(actions):
            with no_sync() if no_sync is not None and i != last_backward else nullcontext():
                total += self._run_action(a, micro_batches, divisor, inputs, outputs)
        self._finish_sends()
        self.compute_s = time.perf_counter() - start - self.wait_s
        return total

    def _run_action(self, a: Action, micro_batches: list, divisor: int, inputs: dict, outputs: dict) -> torch.Tensor:
        """One forward or backward; returns the (detached) loss it computed, or zero."""
        loss = torch.zeros((), device=self.device)
        stage = stage_of(self.pp_rank, a.chunk, self.pp)
        batch = micro_batches[a.microbatch].to(self.device, non_blocking=True)
        key = (a.microbatch, a.chunk)
        if a.kind == "F":
            if stage == 0:
                self._exchange()
                x = None
            else:
                x = self._exchange(stage - 1, "activation", a.microbatch, stage).requires_grad_()
            inputs[key] = x if stage > 0 else None
            last = stage == self.num_stages - 1
            with self.autocast:  # the last stage returns (None, loss)
                y = self._forward(a.chunk, batch, x, return_logits=False)
            if last:
                y = y / divisor
                loss = y.detach()
                if self.grad_scale is not None:
                    y = self.grad_scale(y)
            else:
                self._queue_send(y, stage + 1, "activation", a.microbatch, stage + 1)
            outputs[key] = y
            self.peak_live = max(self.peak_live, len(outputs))
        else:
            y = outputs.pop(key)
            if stage == self.num_stages - 1:
                self._exchange()
                y.backward()
            else:
                grad = self._exchange(stage + 1, "grad", a.microbatch, stage)
                torch.autograd.backward(y, grad.to(y.dtype))
            x = inputs.pop(key)
            if x is not None:
                self._queue_send(x.grad, stage - 1, "grad", a.microbatch, stage - 1)
            del y, x
        return loss

    # ------------------------------------------------------------------ forward only (evaluation)

    def _forward(self, chunk: int, batch, x: torch.Tensor | None, return_logits: bool) -> torch.Tensor:
        """Chunk `chunk`'s model on a micro-batch: its hidden states, or on the last stage its loss."""
        inputs = model_inputs(batch, return_logits=return_logits)
        if x is not None:
            inputs["hidden_states"] = x
        y = self.stage.chunks[chunk](**inputs)
        return y[1] if self.stage.is_last_stage(chunk) else y

    @torch.no_grad()
    def forward_only(self, batch) -> torch.Tensor:
        """One batch through every stage (no graph); the loss on the last stage, zero elsewhere."""
        batch = batch.to(self.device)
        loss = torch.zeros((), device=self.device)
        for chunk, stage in enumerate(self.stage.stages):
            x = None if stage == 0 else self._exchange(stage - 1, "activation", 0, stage)
            last = stage == self.num_stages - 1
            with self.autocast:  # evaluation computes the logits, as the model does by default
                y = self._forward(chunk, batch, x, return_logits=True)
            if last:
                loss = y.float()
            else:
                self._queue_send(y, stage + 1, "activation", 0, stage + 1)
        self._finish_sends()
        return loss
