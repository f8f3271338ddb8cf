"""What a DP-SGD run adds to a training run (`fastlm train` and `fastlm finetune` alike).

    pm = fastlm.parallel.parallelize(model, mesh, config)          # swaps the layers for their DP variants
    private = PrivateTraining.setup(config, pm, num_samples)        # None without [privacy] dp_sgd
    step = TrainStep(..., grad_clip=0, micro_backward=private.engine.micro_backward,
                     after_grad_sync=private.engine.add_noise)

setup() fixes the
sampling rate q = global_batch_size / num_samples and delta (default 1 / num_samples), calibrates
the noise for privacy.target_epsilon over train.steps when no noise_multiplier is given, and, when
both are given, finds the last step whose epsilon stays within the target (`last_step`).
`privacy.json` in the run directory records what a reader needs to check the guarantee.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from fastlm.privacy.accounting import calibrate_noise, epsilon, steps_within
from fastlm.privacy.engine import DPSGD


@dataclass
class PrivateTraining:
    engine: DPSGD
    noise_multiplier: float
    sample_rate: float
    num_samples: int
    delta: float
    last_step: int          # train.steps, or the last step within target_epsilon
    settings: object        # the [privacy] section

    @classmethod
    def setup(cls, config, pm, num_samples: int) -> "PrivateTraining | None":
        """pm: the fastlm.parallel.ParallelModel (its layers already swapped by parallelize)."""
        from fastlm.train.errors import ConfigError  # here: fastlm.train's trainer imports this module

        p, t = config.privacy, config.train
        if not p.dp_sgd:
            return None
        if num_samples < 1:
            raise ConfigError("privacy.dp_sgd: the training data holds no sample")
        mesh = pm.mesh
        dp_world = pm.dp.world_size if pm.dp is not None else 1
        tp_group = mesh.tp_group if mesh is not None and mesh.tp > 1 else None
        q = min(1.0, t.global_batch_size / num_samples)
        delta = p.delta if p.delta is not None else 1.0 / num_samples
        sigma = p.noise_multiplier
        if sigma is None:
            sigma = calibrate_noise(target_epsilon=p.target_epsilon, sample_rate=q, steps=t.steps, delta=delta,
                                    accountant=p.accountant)
        last = t.steps
        if p.target_epsilon is not None:
            last = steps_within(p.target_epsilon, noise_multiplier=sigma, sample_rate=q, delta=delta,
                                accountant=p.accountant, limit=t.steps)
            if last == 0:
                raise ConfigError(f"privacy.target_epsilon = {p.target_epsilon}: already exceeded by one step with "
                                  f"noise_multiplier {sigma:g} at sampling rate {q:.4g}")
        engine = DPSGD(pm.module, max_grad_norm=p.max_grad_norm, noise_multiplier=sigma,
                       expected_batch_size=t.global_batch_size, seed=t.seed, world_size=dp_world, tp_group=tp_group)
        return cls(engine, sigma, q, num_samples, delta, last, p)

    def epsilon(self, steps: int) -> float:
        return epsilon(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=steps,
                       delta=self.delta, accountant=self.settings.accountant)

    def describe(self) -> str:
        return (f"DP-SGD: noise multiplier {self.noise_multiplier:.4g}, clipping {self.settings.max_grad_norm:g}, "
                f"sampling rate {self.sample_rate:.4g} ({self.settings.sampling}) of {self.num_samples} samples, "
                f"delta {self.delta:.3g}; epsilon after {self.last_step} steps: {self.epsilon(self.last_step):.3f}")

    def stop_message(self, steps: int) -> str | None:
        """Why the run ends before train.steps (None when it does not)."""
        if self.last_step >= steps:
            return None
        return (f"privacy: stopped after step {self.last_step} of {steps}: another step would exceed "
                f"privacy.target_epsilon = {self.settings.target_epsilon:g} "
                f"(epsilon now {self.epsilon(self.last_step):.3f})")

    def summary(self, steps: int) -> dict:
        s = self.settings
        eps = self.epsilon(steps)
        return {"mechanism": "DP-SGD (per-sample clipping, Gaussian noise)", "accountant": s.accountant,
                "sampling": s.sampling, "noise_multiplier": self.noise_multiplier, "max_grad_norm": s.max_grad_norm,
                "sample_rate": self.sample_rate, "expected_batch_size": self.engine.expected_batch_size,
                "num_samples": self.num_samples, "steps": steps, "delta": self.delta,
                "epsilon": eps if math.isfinite(eps) else None, "target_epsilon": s.target_epsilon,
                "sample_unit": "one training sequence (a window of data.seq_len tokens, or one task example)"}

    def write(self, run_dir: Path, steps: int) -> None:
        """privacy.json (written to a temporary name, then renamed)."""
        path = Path(run_dir) / "privacy.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.summary(steps), indent=1) + "\n")
        os.replace(tmp, path)


def private_step_hooks(private, t) -> dict:
    """TrainStep's keywords for a run: DP-SGD's hooks (its per-sample clipping replaces train.grad_clip)."""
    if private is None:
        return {"grad_clip": t.grad_clip}
    return {"grad_clip": 0.0, "micro_backward": private.engine.micro_backward,
            "after_grad_sync": private.engine.add_noise}


def private_metrics(private, step: int, run_dir: Path | None) -> dict:
    """{"epsilon": ...} spent after `step` steps (and privacy.json rewritten in run_dir); {} without DP-SGD."""
    if private is None:
        return {}
    if run_dir is not None:
        private.write(run_dir, step)
    eps = private.epsilon(step)
    return {"epsilon": eps if eps != float("inf") else None}
