"""Fixtures of the accountability tests: a session corpus cache and one finished micro LM run."""
from __future__ import annotations

import pytest

from tests.train.conftest import fastlm_cache  # noqa: F401  (an autouse session fixture)
from tests.train.train_helpers import micro_config


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory):
    """A finished micro LLaMA-style run (read-only for the tests that use it)."""
    from fastlm.train import Trainer

    out = tmp_path_factory.mktemp("runs") / "micro"
    Trainer(micro_config(), out_dir=out, show_progress=False).fit()
    return out


@pytest.fixture(scope="session")
def classifier_runs(tmp_path_factory):
    """Two finished classification runs: a decoder (last-token pooling) and an encoder ([CLS] pooling)."""
    from fastlm.tasks import get_task
    from fastlm.tasks.config import task_config_from_dict
    from fastlm.tasks.loop import finetune
    from tests.tasks.task_helpers import synthetic_records, tiny_config, write_jsonl

    root = tmp_path_factory.mktemp("cls")
    train = write_jsonl(root / "train.jsonl", synthetic_records(120, seed=0))
    val = write_jsonl(root / "val.jsonl", synthetic_records(30, seed=1))
    task = get_task("classification")
    runs = {}
    for family in ("llama", "bert"):
        tc = task_config_from_dict(tiny_config(train, val, family=family, steps=8), task.Section)
        finetune(task, tc, root / family, show_progress=False)
        runs[family] = root / family
    return runs
