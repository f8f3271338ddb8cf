"""Document sources: the builtin corpus, text files/directories/globs, JSONL, and their errors."""
import json

import pytest

from fastlm.data import sources
from fastlm.data.sources import DEFAULT_BUILTIN_MODULES, builtin_documents, jsonl_documents, resolve_source


def test_builtin_corpus_is_real_text():
    import pydoc_data.topics

    docs = list(builtin_documents())
    topics = [t for t in pydoc_data.topics.topics.values() if t.strip()]
    found = [m for m in DEFAULT_BUILTIN_MODULES if sources._stdlib_module_file(m) is not None]
    assert len(found) >= 0.9 * len(DEFAULT_BUILTIN_MODULES)
    assert len(docs) == len(topics) + len(found)
    text = "".join(docs)
    assert 1_000_000 < len(text) < 5_000_000  # "a few MB at most"
    assert "Assert statements are a convenient way" in text  # a pydoc topic
    assert "class ArgumentParser" in text  # argparse.py
    # Each module is one document: its whole source file.
    import textwrap as tw
    with open(tw.__file__, encoding="utf-8") as f:
        assert f.read() in docs


def test_builtin_subset_skips_missing_modules():
    src = resolve_source("builtin", builtin_modules=["bisect", "no_such_module_xyz", "json.decoder"])
    names = [p.name for p in src.files]
    assert names[1:] == ["bisect.py", "decoder.py"]  # files[0] is pydoc_data/topics.py
    docs = list(src.documents())
    assert "def bisect_right" in docs[-2] and "class JSONDecoder" in docs[-1]
    assert src.fingerprint() != resolve_source("builtin", builtin_modules=["bisect"]).fingerprint()


def test_text_directory_recursive_skips_hidden_and_binary(tmp_path):
    (tmp_path / "a.txt").write_text("alpha text")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "deeper" / "b.md").write_text("beta text")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("hidden")
    (tmp_path / ".hidden.txt").write_text("hidden")
    (tmp_path / "img.bin").write_bytes(b"\x89PNG\x00\x00binary")
    (tmp_path / "blank.txt").write_text("  \n\n ")
    src = resolve_source(str(tmp_path))
    assert [p.name for p in src.files] == ["a.txt", "blank.txt", "img.bin", "b.md"]
    assert list(src.documents()) == ["alpha text", "beta text"]


def test_glob_and_list_of_sources(tmp_path):
    for name in ["x1.txt", "x2.txt", "y.txt"]:
        (tmp_path / name).write_text(name)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x3.txt").write_text("x3.txt")
    assert list(resolve_source(str(tmp_path / "x*.txt")).documents()) == ["x1.txt", "x2.txt"]
    assert list(resolve_source(str(tmp_path / "**" / "x*.txt")).documents()) == \
        ["x3.txt", "x1.txt", "x2.txt"]
    both = resolve_source([str(tmp_path / "y.txt"), str(tmp_path / "x1.txt")])
    assert list(both.documents()) == ["y.txt", "x1.txt"]


def test_long_text_file_is_cut_into_documents(tmp_path):
    paragraphs = [f"paragraph {i} " + "word " * (i % 50) for i in range(3000)]
    text = "\n\n".join(paragraphs) + "\n"
    (tmp_path / "book.txt").write_text(text)
    docs = list(resolve_source(str(tmp_path / "book.txt")).documents())
    assert len(docs) > 1
    assert "".join(docs) == text  # nothing lost or duplicated
    assert all(len(d) <= sources.TEXT_CHUNK_CHARS for d in docs)
    assert all(d.endswith("\n\n") for d in docs[:-1])  # cut at blank lines
    # A single line longer than the limit is cut anyway.
    assert [len(c) for c in sources._chunks("z" * 25, 10)] == [10, 10, 5]


def test_jsonl(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"text": "first doc", "id": 1}, {"text": "second doc"}, {"text": "   "}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert list(resolve_source(str(path)).documents()) == ["first doc", "second doc"]
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"body": "b"}) + "\n")
    assert list(resolve_source(str(other), text_field="body").documents()) == ["b"]


@pytest.mark.parametrize("lines, message", [
    (['{"text": "ok"}', '{"text": "ok", '], r"bad\.jsonl:2: invalid JSON"),
    (['{"text": "ok"}', '{"body": "x"}'], r"bad\.jsonl:2: no field 'text' \(fields: 'body'\)"),
    (['{"text": 3}'], r"bad\.jsonl:1: field 'text' is int, expected a string"),
    (['["text"]'], r"bad\.jsonl:1: expected a JSON object"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        list(jsonl_documents(path, "text"))


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="data source not found: .*nope"):
        resolve_source(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no files match"):
        resolve_source(str(tmp_path / "*.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no files in directory"):
        resolve_source(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="empty string"):
        resolve_source("")
    with pytest.raises(ValueError, match="builtin_modules must be a list"):
        resolve_source("builtin", builtin_modules="bisect")
