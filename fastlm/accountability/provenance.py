"""RUN_DIR/environment.json: where and when each launch of a run executed (devices, world size,
precision, versions), for the model card's compute section. One entry per launch (a resumed run adds one)."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

ENVIRONMENT = "environment.json"


def launch_record(rt) -> dict:
    """What this launch runs on (rt: fastlm.train.runtime.Runtime)."""
    device = rt.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or
                                                                               platform.machine())
    return {"started_at": time.time(), "world_size": rt.world_size, "device_type": device.type,
            "device_name": name, "precision": rt.precision, "torch": torch.__version__,
            "python": platform.python_version(), "cpu_threads": torch.get_num_threads()}


def record_launch(run_dir: str | Path, rt) -> None:
    """Append this launch to run_dir/environment.json (temporary name, then rename)."""
    path = Path(run_dir) / ENVIRONMENT
    launches = read_launches(run_dir)
    launches.append(launch_record(rt))
    tmp = path.with_name(f".{ENVIRONMENT}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"launches": launches}, indent=1))
    os.replace(tmp, path)


def read_launches(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / ENVIRONMENT
    try:
        launches = json.loads(path.read_text())["launches"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [x for x in launches if isinstance(x, dict)] if isinstance(launches, list) else []
