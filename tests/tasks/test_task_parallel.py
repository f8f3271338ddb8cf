"""The fine-tuning loop on 2 data-parallel processes (gloo) matches one process, also with
adversarial training (its clean backward runs under no_sync)."""
import pytest
import torch

from fastlm.tasks import get_task
from fastlm.tasks.config import task_config_from_dict
from fastlm.tasks.loop import finetune
from tests.parallel.dist_helpers import run_world
from tests.tasks.task_helpers import synthetic_records, tiny_config, write_jsonl


def _raw(train, adversarial):
    return tiny_config(train, steps=3, global_batch_size=16, micro_batch_size=4, adversarial=adversarial,
                       adversarial_epsilon=0.05, grad_clip=0.0)


def _run(rank, world, raw, out):
    torch.set_num_threads(1)
    task = get_task("classification")
    result = finetune(task, task_config_from_dict(raw, task.Section), out, show_progress=False)
    return {k: v.detach().clone() for k, v in result["model"].state_dict().items()}


@pytest.mark.parametrize("adversarial", ["none", pytest.param("fgm", marks=pytest.mark.slow)])
def test_two_processes_match_one(tmp_path, adversarial):
    train = write_jsonl(tmp_path / "t.jsonl", synthetic_records(64))
    raw = _raw(train, adversarial)
    single = _run(0, 1, raw, tmp_path / "one")
    ranks = run_world(_run, 2, raw, str(tmp_path / "two"), timeout=240)
    for name, want in single.items():
        torch.testing.assert_close(ranks[0][name], want, rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(ranks[1][name], ranks[0][name], rtol=0, atol=0, msg=name)
    assert (tmp_path / "two" / "model.safetensors").is_file()
