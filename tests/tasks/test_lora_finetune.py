"""`fastlm finetune` with model.lora: the backbone frozen under adapters, the task head trained in full;
the run evaluates as it trained, and `fastlm merge` gives a plain run that scores the same."""
import safetensors.torch
import torch

from fastlm.tasks import get_task
from fastlm.tasks.backbone import build_backbone
from fastlm.tasks.config import task_config_from_dict
from fastlm.tasks.loop import evaluate_run, finetune
from fastlm.train.lora import merge_run
from tests.tasks.task_helpers import synthetic_records, tiny_config, write_jsonl

TASK = get_task("classification")


def test_lora_classifier(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_records(120, seed=0))
    val = write_jsonl(tmp_path / "val.jsonl", synthetic_records(30, seed=1))
    raw = tiny_config(train, val, steps=8)
    tc = task_config_from_dict(raw, TASK.Section, ["model.lora={rank = 2, alpha = 4.0}"])
    out = tmp_path / "run"
    result = finetune(TASK, tc, out, show_progress=False)
    trainable = {n for n, p in result["model"].named_parameters() if p.requires_grad}
    assert {n for n in trainable if not n.startswith("body.")} == {"head.weight", "head.bias"}  # the new head
    assert all(".lora_" in n for n in trainable if n.startswith("body."))
    saved = safetensors.torch.load_file(out / "model.safetensors")
    torch.manual_seed(tc.config.train.seed)
    body, _ = build_backbone(task_config_from_dict(raw, TASK.Section))  # the initial backbone of the run
    start = body.state_dict()
    prefix = next(k[: -len("blocks.0.attn.qkv.weight")] for k in saved if k.endswith("blocks.0.attn.qkv.weight"))
    for k, v in start.items():
        if prefix + k not in saved:  # the LM head the classifier does not use
            continue
        torch.testing.assert_close(saved[prefix + k], v, rtol=0, atol=0, msg=k)  # the backbone is frozen
    assert any(k.endswith("lora_B") and v.abs().sum() > 0 for k, v in saved.items())
    assert (out / "adapter.safetensors").is_file() and (out / "adapter_config.json").is_file()
    again = evaluate_run(TASK, out)["metrics"]
    assert again["accuracy"] == result["metrics"]["accuracy"]
    merged = merge_run(out, tmp_path / "merged")
    assert evaluate_run(TASK, merged)["metrics"]["accuracy"] == again["accuracy"]
