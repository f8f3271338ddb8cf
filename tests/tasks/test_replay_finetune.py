"""train.replay in `fastlm finetune`: an exact share of every batch is causal-LM windows of
model.init_from's training stream; the step's loss is the example-weighted mix; resumable; any dp."""
from __future__ import annotations

import copy
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from fastlm.parallel import parallelize
from fastlm.tasks import get_task
from fastlm.tasks.classification import SequenceClassifier
from fastlm.tasks.config import task_config_from_dict
from fastlm.tasks.loop import ExampleSampler, finetune
from fastlm.tasks.replay import ReplayBatch, TaskReplay
from fastlm.train import Trainer
from fastlm.train.config import Config
from fastlm.train.errors import ConfigError
from fastlm.train.run import init_model_from
from fastlm.train.step import TrainStep, task_loss
from tests.parallel.dist_helpers import run_world
from tests.tasks.task_helpers import synthetic_records, write_jsonl
from tests.train.train_helpers import micro_config

TASK = get_task("classification")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay-ft")
    Trainer(micro_config("model.dropout=0.0"), out_dir=root / "lm", show_progress=False).fit()
    return root / "lm", write_jsonl(root / "train.jsonl", synthetic_records(96))


def task_raw(backbone, **train):
    lm, data = backbone
    t = {"steps": 4, "global_batch_size": 8, "micro_batch_size": 2, "lr": 3e-3, "warmup_steps": 1,
         "weight_decay": 0.0, "log_every": 1, "eval_every": 0, "precision": "fp32", "replay": 0.25, **train}
    return {"task": {"train": data}, "model": {"init_from": str(lm)}, "data": {"seq_len": 32}, "train": t,
            "checkpoint": {"every": 2, "keep": 3}}


def test_the_share_is_exact_and_the_same_for_any_dp():
    tokens = np.arange(3000) % 97
    replay = TaskReplay(0.3, 10, tokens, 16, seed=5, lm_head=None, body=None)
    assert replay.count == 3
    task = SimpleNamespace(collate=lambda examples: {"ids": torch.tensor(examples)})
    t = SimpleNamespace(global_batch_size=10, micro_batch_size=1)
    plain = ExampleSampler(40, 7, seed=5)

    def rank_batches(dp, rank):
        sampler = replay.sampler(ExampleSampler(40, 7, seed=5))
        next_batches = replay.batches(task, list(range(40)), sampler, SimpleNamespace(dp=(dp, rank)), t)
        return [next_batches() for _ in range(6)]

    one = rank_batches(1, 0)
    two = [a + b for a, b in zip(rank_batches(2, 0), rank_batches(2, 1))]  # rank 0's slots, then rank 1's
    for step, (mine, theirs) in enumerate(zip(one, two)):
        assert sum(b.n_lm for b in mine) == 3 and sum(b.n_task for b in mine) == 7
        assert [int(b.task["ids"][0]) for b in mine if b.task is not None] == plain.next()  # the task's order
        for b in mine:
            if b.lm is not None:  # a window of the original stream
                start = int(b.lm[0, 0])
                assert torch.equal(b.lm[0], torch.from_numpy(tokens[start:start + 16]))
        assert [(b.n_task, b.n_lm) for b in mine] == [(b.n_task, b.n_lm) for b in theirs]
        for a, b in zip(mine, theirs):
            assert (a.task is None and b.task is None) or torch.equal(a.task["ids"], b.task["ids"])
            assert (a.lm is None and b.lm is None) or torch.equal(a.lm, b.lm)
    assert len({tuple(b.n_lm for b in batches) for batches in one}) > 1  # the slots move from step to step


def test_a_step_equals_the_hand_written_mix(backbone):
    lm, _ = backbone
    torch.manual_seed(0)
    body, _ = init_model_from(lm)
    head = body.lm_head
    model = TaskReplay(0.5, 8, None, 32, 0, head, body).wrap(SequenceClassifier(body, 3), task_loss)
    reference = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    examples = [{"ids": torch.randint(1, 320, (int(n),), generator=g).tolist(), "label": i % 3}
                for i, n in enumerate(torch.randint(4, 12, (5,), generator=g))]
    windows = torch.randint(0, 320, (3, 32), generator=g)
    compositions = [(3, 1), (2, 2)]  # 5 examples, 3 windows over 2 micro-batches of 4 (unequal mixes)
    micro, e, w = [], 0, 0
    for n_task, n_lm in compositions:
        micro.append(ReplayBatch(TASK.collate(examples[e:e + n_task]) if n_task else None,
                                 windows[w:w + n_lm] if n_lm else None, n_task, n_lm))
        e, w = e + n_task, w + n_lm
    pm = parallelize(model, None, Config())
    step = TrainStep(pm, torch.optim.SGD(model.parameters(), lr=1.0), device=torch.device("cpu"), loss_of=task_loss)
    result = step(micro)

    # the definition: the mean over the 8 slots of each example's CE and each window's mean token CE
    classifier, ref_body, ref_head = reference.task, reference.task.body, reference.lm_head
    losses = [F.cross_entropy(classifier(TASK.collate([x]))["logits"], torch.tensor([x["label"]])) for x in examples]
    for window in windows:
        logits = ref_head(ref_body.hidden_states(window[None]))
        losses.append(F.cross_entropy(logits[0, :-1], window[1:]))
    want = torch.stack(losses).mean()
    want.backward()
    assert float(result.loss) == pytest.approx(float(want.detach()), rel=1e-5)
    for (name, p), q in zip(reference.named_parameters(), model.parameters()):
        torch.testing.assert_close(q.detach(), (p - p.grad).detach(), rtol=1e-5, atol=1e-6, msg=name)


def test_resume_is_exact(backbone, tmp_path):
    raw = task_raw(backbone)
    finetune(TASK, task_config_from_dict(raw, TASK.Section), tmp_path / "a", show_progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step_0000004")
    (tmp_path / "b" / "model.safetensors").unlink()
    finetune(TASK, task_config_from_dict(raw, TASK.Section), tmp_path / "b", show_progress=False, resume=True)
    a, b = (safetensors.torch.load_file(tmp_path / d / "model.safetensors") for d in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    without = copy.deepcopy(raw)
    without["train"]["replay"] = 0.0  # the control: replay changes the run
    finetune(TASK, task_config_from_dict(without, TASK.Section), tmp_path / "c", show_progress=False)
    c = safetensors.torch.load_file(tmp_path / "c" / "model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def _run(rank, world, raw, out):
    torch.set_num_threads(1)
    result = finetune(TASK, task_config_from_dict(raw, TASK.Section), out, show_progress=False)
    return {k: v.detach().clone() for k, v in result["model"].state_dict().items()}


def test_two_processes_match_one(backbone, tmp_path):
    raw = task_raw(backbone, steps=3, micro_batch_size=1)
    single = _run(0, 1, raw, tmp_path / "one")
    ranks = run_world(_run, 2, raw, str(tmp_path / "two"), timeout=240)
    for name, want in single.items():
        torch.testing.assert_close(ranks[0][name], want, rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(ranks[1][name], ranks[0][name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("train,match", [
    ({"replay": 0.05}, r"round\(0.05 \* train.global_batch_size = 8\) = 0 replayed windows"),
    ({"replay": 1.5}, r"train.replay = 1.5: expected a share of each batch"),
])
def test_bad_replay_is_a_config_error(backbone, tmp_path, train, match):
    with pytest.raises(ConfigError, match=match):
        finetune(TASK, task_config_from_dict(task_raw(backbone, **train), TASK.Section), tmp_path / "x",
                 show_progress=False)
