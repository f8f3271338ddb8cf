"""fastlm.tasks: fine-tuning tasks (`fastlm finetune TASK CONFIG`, `fastlm evaluate TASK RUN_DIR`).

    from fastlm.tasks import finetune, evaluate
    result = finetune("classification", "classification-demo", ["train.steps=100"])
    evaluate("classification", result["run_dir"])
"""
from __future__ import annotations

from fastlm.tasks.captioning import CaptioningTask
from fastlm.tasks.classification import ClassificationTask
from fastlm.tasks.image_classification import ImageClassificationTask
from fastlm.tasks.qa import QATask
from fastlm.tasks.retrieval import RetrievalTask
from fastlm.tasks.seq2seq import GenerationTask, TranslationTask
from fastlm.tasks.speech import SpeechTask
from fastlm.train.errors import ConfigError

TASKS = {"classification": ClassificationTask, "generation": GenerationTask, "translation": TranslationTask,
         "qa": QATask, "speech": SpeechTask, "captioning": CaptioningTask,
         "image_text_retrieval": RetrievalTask, "image_classification": ImageClassificationTask}


def get_task(name: str):
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r} (expected one of: {', '.join(TASKS)})")
    return TASKS[name]()


def finetune(task: str, config, overrides=(), out_dir=None, show_progress: bool = True, resume: bool = False) -> dict:
    """Fine-tune on a task config (a TOML file or a shipped demo config name)."""
    from fastlm.tasks.config import load_task_config
    from fastlm.tasks.loop import finetune as run

    t = get_task(task)
    return run(t, load_task_config(config, t.Section, overrides), out_dir, show_progress, resume)


def evaluate(task: str, run_dir, data=None, out_dir=None, groups: str | None = None) -> dict:
    """Score a finished run on its validation split, or on another file (`data`); groups: the data
    column naming each example's group (classification: also fairness.json and fairness.png)."""
    from fastlm.tasks.loop import evaluate_run

    return evaluate_run(get_task(task), run_dir, data, out_dir, groups)


__all__ = ["TASKS", "get_task", "finetune", "evaluate"]
