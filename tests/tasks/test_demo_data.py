"""Demo datasets from this machine's gettext catalogs (skipped where there are none)."""
import json
from pathlib import Path

import pytest

from fastlm.tasks.datasets import DatasetError
from fastlm.tasks.demo import LANGID_LANGUAGES, clean_message, demo_dataset, locale_dir

HAVE_CATALOGS = all(any((locale_dir() / lang / "LC_MESSAGES").glob("*.mo")) for lang in LANGID_LANGUAGES)
needs_catalogs = pytest.mark.skipif(not HAVE_CATALOGS, reason=f"no gettext catalogs for {LANGID_LANGUAGES} "
                                                               f"under {locale_dir()} (language packs not installed)")


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@needs_catalogs
def test_langid_demo(tmp_path):
    paths = demo_dataset("langid", tmp_path, size=600)
    train, val = _rows(paths["train"]), _rows(paths["validation"])
    assert len(train) + len(val) == 600 and len(val) == 60
    labels = [r["label"] for r in train + val]
    assert sorted(set(labels)) == sorted(LANGID_LANGUAGES)
    assert all(labels.count(lang) == 100 for lang in LANGID_LANGUAGES)  # balanced
    assert all(12 <= len(r["text"]) <= 120 for r in train)
    # cached: a second call reuses the files
    mtime = paths["train"].stat().st_mtime_ns
    assert demo_dataset("langid", tmp_path, size=600)["train"].stat().st_mtime_ns == mtime


@needs_catalogs
def test_en_de_demo(tmp_path):
    rows = _rows(demo_dataset("en-de", tmp_path, size=200)["train"])
    assert len(rows) == 180 and all(r["source"] != r["target"] for r in rows)


def test_missing_catalogs_are_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTLM_LOCALE_DIR", str(tmp_path / "no-locales"))
    with pytest.raises(DatasetError, match="gettext catalogs in .*no-locales.*too few"):
        demo_dataset("langid", tmp_path / "cache", size=60)
    with pytest.raises(DatasetError, match="unknown demo dataset"):
        demo_dataset("nope", tmp_path)


def test_clean_message():
    assert clean_message("_Open the %s file…") == "Open the file…"
    assert clean_message("<b>Warning:</b> disk is %d%% full") == "Warning: disk is % full"
    assert clean_message("ok") is None  # too short
    assert clean_message("%s: %s: %d: %s (%s)") is None  # no prose
