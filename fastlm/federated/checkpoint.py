"""Checkpoints of a federated run, through the trainer's checkpoint files (fastlm.train.checkpoint):
RUN_DIR/checkpoints/step_0000010/ after round 10 holds the global model, every client's optimizer
state (client_state = "keep") as "optimizer.pt", and the round with every client's data position as
"state.pt". checkpoint.every counts rounds. Under torchrun the clients' states are gathered on rank 0,
which writes; on resume every rank keeps the clients it hosts. Client sampling, dropouts and DP noise
are functions of (seed, round), so a resumed run continues exactly as the uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from fastlm.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from fastlm.train.errors import CheckpointError


@dataclass
class _Saved:
    """What save_checkpoint / load_checkpoint need of an optimizer or a loader: state_dict, load_state_dict."""
    state: dict
    on_load: object = None

    def state_dict(self) -> dict:
        return self.state

    def load_state_dict(self, state: dict) -> None:
        self.on_load(state)


class FederatedCheckpointer:
    def __init__(self, run_dir, rounds, identity: dict, *, every: int, keep: int, is_main: bool, device, enc=None):
        self.run_dir, self.rounds, self.identity = run_dir, rounds, identity  # rounds: a FederatedRounds
        self.every, self.keep, self.is_main, self.device, self.enc = every, keep, is_main, device, enc

    def maybe_save(self, done: int, total: int) -> None:
        if self.every and (done % self.every == 0 or done == total):
            self.save(done)

    def save(self, done: int) -> None:
        """A collective under torchrun (the clients' states meet on rank 0)."""
        r = self.rounds
        mine = {"optimizers": dict(r.states.saved), "client_steps": dict(r.client_steps)}
        parts = [mine]
        if r.world_size > 1:
            parts = [None] * r.world_size
            dist.all_gather_object(parts, mine, group=r.group)
        if not self.is_main:
            return
        optimizers = {c: s for part in parts for c, s in part["optimizers"].items()}
        steps = {c: n for part in parts for c, n in part["client_steps"].items()}
        save_checkpoint(self.run_dir, done, r.pm.module, _Saved({"clients": optimizers}), None,
                        _Saved({"round": done, "client_steps": steps}), self.identity, self.keep, self.enc)

    def resume(self, say=print) -> int:
        """Restore the newest checkpoint; returns the rounds done."""
        path = latest_checkpoint(self.run_dir)
        if path is None:
            raise CheckpointError(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}")
        r = self.rounds
        hosted = lambda c: c % r.world_size == r.rank  # noqa: E731 - the clients this process trains

        def load_optimizers(state):
            r.states.saved = {c: s for c, s in state["clients"].items() if hosted(c)}

        def load_position(state):
            r.client_steps = {c: n for c, n in state["client_steps"].items() if hosted(c)}

        done = load_checkpoint(path, r.pm.module, _Saved({}, load_optimizers), None, _Saved({}, load_position),
                               self.identity, self.device, self.enc)
        say(f"fastlm: resumed from {path} (round {done})")
        return done
