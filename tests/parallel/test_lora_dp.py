"""A LoRA run (model.init_from + model.lora), also with train.replay, with 2 data-parallel processes
(torchrun, gloo) equals one process."""
from __future__ import annotations

import json

import pytest
import torch

from fastlm.train import Trainer
from tests.parallel.test_trainer_dp import COMMON, _losses, _torchrun, _weights
from tests.train.train_helpers import micro_config

LORA = "model.lora={rank = 4, alpha = 8.0}"


@pytest.mark.parametrize("replay", [[], ["train.replay=0.25"]])
def test_two_data_parallel_processes_equal_one(tmp_path, replay):
    base = tmp_path / "base"
    Trainer(micro_config(*COMMON), out_dir=base, show_progress=False).fit()
    extra = [f"model.init_from={json.dumps(str(base))}", LORA, *replay]
    single = tmp_path / "single"
    Trainer(micro_config(*COMMON, *extra), out_dir=single, show_progress=False).fit()
    dp = tmp_path / "dp"
    out = _torchrun(dp, extra)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(_losses(single)) == 4 and _losses(single) == pytest.approx(_losses(dp), rel=1e-5)
    a, b = _weights(single), _weights(dp)
    assert any(k.endswith("lora_B") and a[k].abs().sum() > 0 for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
    assert (dp / "adapter.safetensors").is_file()
