"""A few training steps of a small patched LLaMA give the unpatched losses (plain loop and HF Trainer)."""
import copy

import pytest
import torch

from fastlm.integrations.huggingface import apply_fastlm

from .hf_models import _unpatch, build  # noqa: F401

transformers = pytest.importorskip("transformers")
STEPS = 5


def _batches():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(1, 257, (4, 24), generator=g) for _ in range(STEPS)]


def _train(model):
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for ids in _batches():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_plain_loop_losses_match():
    ref = build("llama")
    model = apply_fastlm(copy.deepcopy(ref))
    want, got = _train(ref), _train(model)
    assert want[-1] < want[0]  # it learns
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_hf_trainer_losses_match(tmp_path):
    pytest.importorskip("accelerate")
    data = [{"input_ids": ids[i], "labels": ids[i]} for ids in _batches() for i in range(ids.shape[0])]

    def run(model, out):
        args = transformers.TrainingArguments(
            output_dir=str(out), per_device_train_batch_size=4, max_steps=4, learning_rate=3e-3, logging_steps=1,
            report_to=[], save_strategy="no", use_cpu=True, dataloader_num_workers=0, seed=0,
            lr_scheduler_type="constant",
            disable_tqdm=True)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
        trainer.train()
        return [log["loss"] for log in trainer.state.log_history if "loss" in log]

    ref = build("llama")
    model = apply_fastlm(copy.deepcopy(ref))
    want = run(ref, tmp_path / "ref")
    got = run(model, tmp_path / "fastlm")
    assert len(want) == 4
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
