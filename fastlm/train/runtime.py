"""Where a run executes: its rank, device, precision and process mesh (from torchrun's environment).

    rt = Runtime.from_env(config, mesh=init_run_mesh(config) if launched else None)
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

from fastlm.train.errors import ConfigError


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device
    precision: str           # fp32 | bf16 | fp16 (auto resolved)
    mesh: object = None      # fastlm.parallel.Mesh under torchrun, else None
    show_progress: bool = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp(self) -> tuple[int, int]:
        """(data-parallel size, this rank's data-parallel index)."""
        return (self.mesh.dp, self.mesh.dp_rank) if self.mesh is not None else (1, 0)

    @classmethod
    def from_env(cls, config, show_progress: bool = True, mesh=None) -> "Runtime":
        """mesh: the process mesh when torchrun started several processes (init_run_mesh), else None."""
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() \
            else torch.device("cpu")
        return cls(rank, world, device, resolve_precision(config.train.precision, device), mesh, show_progress)

    def say(self, message: str, bar=None) -> None:
        """A line on stderr from the main rank (above the progress bar when there is one)."""
        if self.is_main and self.show_progress:
            (bar.write if bar is not None else print)(message, file=sys.stderr)


def init_run_mesh(config):
    """torchrun started several processes: the process groups, and the same config everywhere."""
    from fastlm.parallel import init_mesh

    p = config.parallel
    mesh = init_mesh(dp=p.dp, tp=p.tp, pp=p.pp, timeout_s=p.timeout_s)
    mesh.check_same("config", config.to_dict())
    return mesh


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16 on GPU, fp32 on CPU (bf16 autocast is much slower than fp32 on most CPUs)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError('train.precision = "fp16": needs a CUDA GPU (dynamic loss scaling); '
                          'use "bf16" or "fp32" on CPU')
    return precision
