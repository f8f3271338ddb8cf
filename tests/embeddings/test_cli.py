"""`fastlm embeddings train|neighbors|analogy` on a tiny config; one-line errors."""
import json

import pytest

from fastlm.cli import main
from fastlm.embeddings import WordVectors
from tests.embeddings.planted import CLASSES, class_of, planted_corpus


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "planted.txt"
    path.write_text(planted_corpus(3000))
    return path


@pytest.mark.parametrize("method,fmt", [("skipgram", "text"), ("cbow", "binary"), ("glove", "text")])
def test_train_then_query(tmp_path, corpus_file, capsys, method, fmt):
    config = tmp_path / "tiny.toml"
    config.write_text(f'[embeddings]\nmethod = "{method}"\ndim = 32\nmin_count = 1\nformat = "{fmt}"\n'
                      f'[data]\nsource = "{corpus_file}"\n')
    run = tmp_path / "run"
    epochs = "embeddings.epochs=30" if method == "glove" else "embeddings.epochs=5"
    assert main(["embeddings", "train", str(config), "--out", str(run), "--set", epochs, "--quiet"]) == 0
    vectors = run / ("vectors.bin" if fmt == "binary" else "vectors.txt")
    assert vectors.is_file() and (run / "vectors.safetensors").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["vocab_size"] == len(WordVectors.load(vectors))
    assert "epochs = " in (run / "config.toml").read_text()
    capsys.readouterr()

    assert main(["embeddings", "neighbors", str(run), "animal3", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(class_of(line.split("\t")[0]) == "animal" for line in lines)
    assert main(["embeddings", "analogy", str(vectors), "animal0", "animal1", "color0", "-k", "2"]) == 0
    words = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert len(words) == 2 and not {"animal0", "animal1", "color0"} & set(words)


def test_errors_are_one_line(tmp_path, corpus_file, capsys):
    assert main(["embeddings", "neighbors", str(tmp_path / "missing"), "x"]) == 1
    assert "no such run directory" in capsys.readouterr().err
    wv = WordVectors(CLASSES["animal"], __import__("torch").eye(8))
    wv.save(tmp_path / "v.safetensors")
    assert main(["embeddings", "neighbors", str(tmp_path / "v.safetensors"), "unicorn"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastlm: error: word 'unicorn' is not in the vocabulary") and err.count("\n") == 1
    assert main(["embeddings", "train", "word2vec", "--set", "embeddings.method=fasttext", "--quiet"]) == 1
    assert "embeddings.method = 'fasttext': expected skipgram or cbow or glove" in capsys.readouterr().err
    assert main(["embeddings", "train", "word2vec", "--set", "model.dim=3"]) == 1
    assert "--set 'model.dim=3'" in capsys.readouterr().err
    assert main(["embeddings", "train", "nope"]) == 1
    assert "presets: cbow, glove, word2vec" in capsys.readouterr().err
    config = tmp_path / "c.toml"
    config.write_text(f'[embeddings]\nmin_count = 100000\n[data]\nsource = "{corpus_file}"\n')
    assert main(["embeddings", "train", str(config), "--out", str(tmp_path / "r"), "--quiet"]) == 1
    assert "no word occurs min_count = 100000 times" in capsys.readouterr().err
