"""Every shipped demo config runs (a few steps of a shrunken model on a small demo dataset)."""
import json
import shutil

import pytest

from fastlm.tasks import get_task
from fastlm.tasks.config import demo_config_names, load_task_config
from fastlm.tasks.demo import LANGID_LANGUAGES, locale_dir
from fastlm.tasks.loop import finetune

HAVE_CATALOGS = all(any((locale_dir() / lang / "LC_MESSAGES").glob("*.mo")) for lang in LANGID_LANGUAGES)

DEMOS = {
    "classification-demo": ("classification", "demo:langid:120", ["data.vocab_size=300"]),
    "classification-fairness-demo": ("classification", "demo:langid-groups:120", ["data.vocab_size=300"]),
    "translation-demo": ("translation", "demo:en-de:120", ["data.vocab_size=300", "task.eval_examples=2"]),
    "generation-demo": ("generation", "demo:summaries:120", ["data.vocab_size=300", "task.eval_examples=2"]),
    "qa-demo": ("qa", "demo:qa:120", ["data.vocab_size=300"]),
    "speech-demo": ("speech", "demo:speech:20", []),
    "captioning-demo": ("captioning", "demo:captioning:40", ["model.n_kv_head=2", "task.max_new_tokens=4"]),
    "retrieval-demo": ("image_text_retrieval", "demo:captioning:40", ["model.d_ff=64"]),
    "image-classification-demo": ("image_classification", "demo:captioning:40", ["model.d_ff=64"]),
}


def test_every_shipped_config_is_listed():
    assert sorted(DEMOS) == demo_config_names()


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_demo_config_runs(tmp_path, name):
    task_name, source, extra = DEMOS[name]
    if task_name == "speech" and shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    if task_name not in ("generation", "captioning", "image_text_retrieval", "image_classification") and not HAVE_CATALOGS:
        pytest.skip(f"no gettext catalogs under {locale_dir()}")
    task = get_task(task_name)
    tc = load_task_config(name, task.Section, [f"task.train={source}", "train.steps=3", "train.eval_every=0",
                                               "model.n_layer=1", "model.d_model=32", "model.n_head=2",
                                               "train.global_batch_size=8", "train.micro_batch_size=8", *extra])
    if task_name == "generation":
        try:
            result = finetune(task, tc, tmp_path / "run", show_progress=False)
        except Exception as e:  # noqa: BLE001
            if "package descriptions" in str(e):
                pytest.skip(str(e))
            raise
    else:
        result = finetune(task, tc, tmp_path / "run", show_progress=False)
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["loss"] == pytest.approx(result["metrics"]["loss"])
