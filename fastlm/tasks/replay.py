"""train.replay for fine-tuning tasks: a share of every batch is language-model windows of the
backbone's original training stream, trained with its pretraining objective, to limit forgetting.

    replay = TaskReplay.setup(tc, body, tokenizer_file)   # None without train.replay
    trained = replay.wrap(task_model, loss_of)            # ReplayModel: what parallelize and TrainStep get
    sampler, next_batches = replay.sampler(...), replay.batches(task, train, rt, t)

Step s: of the global batch's B = train.global_batch_size slots, r = round(replay * B) are chosen
from (seed, s) (as fastlm.data.replay does for `fastlm train`) and hold windows of
data.seq_len tokens of model.init_from's training stream (its config.toml's [data], tokenized with
its tokenizer.json, which must be this run's tokenizer); the other B - r slots hold the task's
examples in ExampleSampler order. Window starts are drawn from (seed, s) too, so a batch is a pure
function of (seed, s, the sampler's position): the same for any number of data-parallel ranks, and
a checkpoint resumes it exactly (the step is saved with the sampler's state).

Each micro-batch's loss is the example-weighted mean (n_task * task loss + n_lm * causal-LM loss) /
(n_task + n_lm), every micro-batch holds micro_batch_size slots, so the step's loss is that mean
over the global batch. The backbone must be a GPT-family model (causal LM); the LM head, which a
task model drops, trains with it (and is not part of the task model's saved weights).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastlm.models import GPT
from fastlm.nn.head import head_loss
from fastlm.train.errors import ConfigError


def replay_slots(seed: int, step: int, batch: int, count: int) -> np.ndarray:
    """The sorted global-batch positions of step's replayed windows (fastlm.data.replay's draw)."""
    return np.sort(np.random.default_rng([seed, step, 3]).choice(batch, size=count, replace=False))


def window_starts(seed: int, step: int, n_tokens: int, seq_len: int, count: int) -> np.ndarray:
    return np.random.default_rng([seed, step, 4]).integers(0, n_tokens - seq_len + 1, size=count)


@dataclass
class ReplayBatch:
    """One micro-batch: task examples (collated, or None) and LM windows (B, T) (or None)."""
    task: dict | None
    lm: torch.Tensor | None
    n_task: int
    n_lm: int

    def to(self, device, non_blocking: bool = False) -> "ReplayBatch":
        task = None if self.task is None else {k: v.to(device, non_blocking=non_blocking) for k, v in self.task.items()}
        lm = None if self.lm is None else self.lm.to(device, non_blocking=non_blocking)
        return ReplayBatch(task, lm, self.n_task, self.n_lm)


class ReplayModel(nn.Module):
    """The task model and the backbone's LM head; forward(ReplayBatch) -> {"loss": the weighted mix}."""

    def __init__(self, task_model: nn.Module, body: GPT, lm_head: nn.Module, task_loss_of):
        super().__init__()
        self.task, self.lm_head = task_model, lm_head
        self._body = [body]  # the task model's own backbone (registered there, not twice here)
        self.task_loss_of = task_loss_of

    def lm_loss(self, ids: torch.Tensor) -> torch.Tensor:
        """The backbone's causal-LM loss of windows (B, T): mean over the B * (T - 1) predicted tokens."""
        hidden = self._body[0].hidden_states(ids)
        targets = F.pad(ids[:, 1:], (0, 1), value=-100)
        return head_loss(self.lm_head, hidden, targets, return_logits=False)[1].float()

    def forward(self, batch: ReplayBatch) -> dict:
        total = 0.0
        if batch.task is not None:
            total = total + batch.n_task * self.task_loss_of(self.task, batch.task)
        if batch.lm is not None:
            total = total + batch.n_lm * self.lm_loss(batch.lm)
        return {"loss": total / (batch.n_task + batch.n_lm)}


class ReplaySampler:
    """The task's ExampleSampler (B - r examples a step) and the replay step counter, checkpointed together."""

    def __init__(self, examples, seed: int):
        self.examples, self.seed, self.step = examples, seed, 0

    def state_dict(self) -> dict:
        return {**self.examples.state_dict(), "replay_step": self.step}

    def load_state_dict(self, state: dict) -> None:
        if "replay_step" not in state:
            raise ConfigError("train.replay: the checkpoint was written without replay (resume with the same "
                              "train.replay)")
        self.examples.load_state_dict(state)
        self.step = int(state["replay_step"])


class TaskReplay:
    def __init__(self, share: float, batch: int, tokens, seq_len: int, seed: int, lm_head: nn.Module, body: GPT):
        self.share, self.batch, self.tokens, self.seq_len, self.seed = share, batch, tokens, seq_len, seed
        self.count = int(round(share * batch))
        self.lm_head, self.body = lm_head, body

    @classmethod
    def setup(cls, tc, body: nn.Module, tokenizer_file: Path | None, show_progress: bool = False) -> "TaskReplay | None":
        """Checks and the original stream's tokens (before the task model drops the LM head)."""
        cfg, t = tc.config, tc.config.train
        if not t.replay:
            return None
        from fastlm.train.config import load_config
        from fastlm.train.data import run_corpus

        if not isinstance(body, GPT) or body.lm_head is None:
            raise ConfigError(f"train.replay = {t.replay}: needs a GPT-family backbone (replayed windows train "
                              f"its causal-LM head); model.init_from = {cfg.model.init_from!r} is not one")
        if cfg.parallel.tp > 1 or cfg.parallel.pp > 1:
            raise ConfigError(f"train.replay = {t.replay}: fine-tuning with replay runs data-parallel only "
                              f"(parallel.tp = {cfg.parallel.tp}, parallel.pp = {cfg.parallel.pp})")
        count = int(round(t.replay * t.global_batch_size))
        if not 0 < count < t.global_batch_size:
            raise ConfigError(f"train.replay = {t.replay}: round({t.replay} * train.global_batch_size = "
                              f"{t.global_batch_size}) = {count} replayed windows; expected between 1 and "
                              f"{t.global_batch_size - 1} (task examples fill the rest)")
        source = Path(cfg.model.init_from)
        original = source / "tokenizer.json"
        if not (source / "config.toml").is_file() or not original.is_file():
            raise ConfigError(f"train.replay: model.init_from = {str(source)!r} is not a fastlm run directory "
                              f"(its config.toml and tokenizer.json name the training stream to replay)")
        if tokenizer_file is None or Path(tokenizer_file).read_bytes() != original.read_bytes():
            raise ConfigError(f"train.replay: this run's tokenizer is not model.init_from's ({original}): "
                              f"the replayed tokens would mean other text")
        config = load_config(source / "config.toml")
        tokens = run_corpus(config, original, show_progress).train_tokens
        seq_len = config.data.seq_len
        if len(tokens) < seq_len:
            raise ConfigError(f"train.replay: model.init_from's training stream has {len(tokens)} tokens, fewer "
                              f"than one window of data.seq_len = {seq_len}")
        return cls(t.replay, t.global_batch_size, tokens, seq_len, t.seed, body.lm_head, body)

    def wrap(self, task_model: nn.Module, task_loss_of) -> ReplayModel:
        return ReplayModel(task_model, self.body, self.lm_head, task_loss_of)

    def sampler(self, examples) -> ReplaySampler:
        """examples: the task's ExampleSampler drawing batch - count examples a step."""
        return ReplaySampler(examples, self.seed)

    def global_batch(self, sampler: ReplaySampler) -> list[tuple[str, int]]:
        """The next step's B slots: ("task", example index) or ("lm", window start)."""
        step = sampler.step
        slots = set(replay_slots(self.seed, step, self.batch, self.count).tolist())
        starts = iter(window_starts(self.seed, step, len(self.tokens), self.seq_len, self.count).tolist())
        examples = iter(sampler.examples.next())
        sampler.step += 1
        return [("lm", next(starts)) if i in slots else ("task", next(examples)) for i in range(self.batch)]

    def window(self, start: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.tokens[start:start + self.seq_len], dtype=np.int64))

    def batches(self, task, train: list, sampler: ReplaySampler, rt, t):
        """next_batches(): this rank's micro-batches (ReplayBatch) of the next global batch."""
        dp_size, dp_rank = rt.dp
        per_rank = t.global_batch_size // dp_size

        def next_batches() -> list:
            mine = self.global_batch(sampler)[dp_rank * per_rank:(dp_rank + 1) * per_rank]
            out = []
            for k in range(0, len(mine), t.micro_batch_size):
                part = mine[k:k + t.micro_batch_size]
                examples = [train[i] for kind, i in part if kind == "task"]
                windows = [self.window(s) for kind, s in part if kind == "lm"]
                out.append(ReplayBatch(task.collate(examples) if examples else None,
                                       torch.stack(windows) if windows else None, len(examples), len(windows)))
            return out
        return next_batches
