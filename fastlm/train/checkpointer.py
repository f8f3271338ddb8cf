"""One checkpoint writer for every training entry point (`fastlm train`, `fastlm finetune`, ...).

    ckpt = Checkpointer(run_dir, pm, optimizer, scaler, data_state, identity, every=100, keep=3)
    start = ckpt.start_step(resume, say)  # 0, or with --resume the newest checkpoint's (any layout)
    ckpt.maybe_save(step, total_steps)    # every `every` steps and at the end

Plain checkpoints (fastlm.train.checkpoint) on one process and under data parallelism (a sharded
optimizer's state gathered first); sharded ones (fastlm.train.sharded_checkpoint, every rank its
part) under tensor or pipeline parallelism. Both are written to a temporary name, sealed with
each file's sha256 and renamed; both load into any layout.
"""
from __future__ import annotations

from pathlib import Path

from fastlm.privacy.encryption import Encryption
from fastlm.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from fastlm.train.errors import CheckpointError
from fastlm.train.sharded_checkpoint import is_sharded_checkpoint, load_sharded_checkpoint, save_sharded_checkpoint


class Checkpointer:
    def __init__(self, run_dir: Path, pm, optimizer, scaler, data_state, identity: dict, *, every: int, keep: int,
                 is_main: bool, device, enc: Encryption | None = None, before_save=None):
        """pm: the fastlm.parallel.ParallelModel; data_state: what restores the data order
        (state_dict / load_state_dict: a batch loader or an example sampler); identity: what a
        checkpoint must match to be resumed (the model config, the data); enc: encrypt plain
        checkpoints ([checkpoint] encrypt; config checks refuse it with sharded ones); before_save: called
        first (the training step's drain of background parameter averages, parallel.sync = "async")."""
        self.run_dir, self.pm, self.optimizer, self.scaler = Path(run_dir), pm, optimizer, scaler
        self.data_state, self.identity = data_state, identity
        self.every, self.keep, self.is_main, self.device, self.enc = every, keep, is_main, device, enc
        self.before_save = before_save

    def resume(self) -> tuple[int, Path]:
        """(the step to continue from, the checkpoint) of the newest checkpoint; CheckpointError if none."""
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            raise CheckpointError(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}")
        args = (self.pm.module, self.optimizer, self.scaler, self.data_state, self.identity, self.device)
        if self.pm.sharded or is_sharded_checkpoint(ckpt):  # any (dp, tp, pp) it was saved at
            return load_sharded_checkpoint(ckpt, *args, self.pm.layout), ckpt
        return load_checkpoint(ckpt, *args, enc=self.enc), ckpt

    def start_step(self, resume: bool, say=print) -> int:
        """The step a run starts from: 0 for a new run, else the newest checkpoint's, restored."""
        if not resume:
            return 0
        start, path = self.resume()
        say(f"fastlm: resumed from {path} (step {start})")
        return start

    def maybe_save(self, step: int, total: int) -> None:
        if self.every and (step % self.every == 0 or step == total):
            self.save(step)

    def save(self, step: int) -> None:
        """A collective under parallelism: every rank calls it."""
        if self.before_save is not None:
            self.before_save()
        if self.pm.sharded:  # every rank writes its shards
            save_sharded_checkpoint(self.run_dir, step, self.pm.module, self.optimizer, self.scaler, self.data_state,
                                    self.identity, self.keep, self.pm.layout)
            return
        # A sharded optimizer (ZeRO-1) gathers every rank's shard first (a collective).
        full = getattr(self.optimizer, "full_state_dict", None)
        saved = _SavedState(full()) if full is not None else self.optimizer
        if self.is_main:
            save_checkpoint(self.run_dir, step, self.pm.module, saved, self.scaler, self.data_state, self.identity,
                            self.keep, self.enc)


class _SavedState:
    """What save_checkpoint needs of an optimizer whose state was gathered beforehand."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state
