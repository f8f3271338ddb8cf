"""What a task provides to the fine-tuning loop (fastlm/tasks/loop.py).

    read_split(tc, path, info)        records of one file, checked (DatasetError names file:line)
    make_info(tc, records)            what the model and scoring need of the training data (JSON)
    tokenizer_texts(records)          text to train a tokenizer on, when the run has none
    encode(tc, records, tok, info)    model-ready examples
    build_model(tc, body, info)       an nn.Module whose forward(batch) returns {"loss", ...}
    collate(examples)                 a batch: dict of tensors
    evaluate(model, examples, info, device, autocast, batch_size, tc) -> (metrics, predictions)
    report(out_dir, metrics, predictions, info)   extra files (plots)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class DataFiles:
    """The [task] keys every task has: where its data is."""

    train: str = ""                   # JSONL/CSV file, or "demo:NAME" (fastlm.tasks.demo)
    validation: str | None = None     # default: data.val_fraction of train, held out


class Task:
    name = "task"
    Section = DataFiles

    def make_info(self, tc, records) -> dict:
        return {}

    def report(self, out_dir: Path, metrics: dict, predictions: list, info: dict) -> None:
        pass
