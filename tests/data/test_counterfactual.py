"""Counterfactual augmentation: exact swaps (case, plurals, her/his), pairs files, and a prepared
corpus that holds each training document's mirrored copy (and a key of its own)."""
import json

import numpy as np
import pytest

from fastlm.data import prepare_corpus
from fastlm.data.counterfactual import Counterfactual
from fastlm.train.errors import ConfigError


@pytest.mark.parametrize("text, expected", [
    ("He met his sister.", "She met her brother."),
    ("HE SAID SHE WOULD", "SHE SAID HE WOULD"),
    ("she and He and SHE", "he and She and HE"),
    ("I gave her the book; her car is red.", "I gave him the book; his car is red."),
    ("The book is his. His was better.", "The book is hers. Hers was better."),
    ("Ask her.", "Ask him."),
    ("The kings and Queens of men", "The queens and Kings of women"),
    ("the chairman's wife and the policemen", "the chairwoman's husband and the policewomen"),
    ("Mr. Smith, two actresses and a waiter", "Mrs. Smith, two actors and a waitress"),
    ("She made herself a hat", "He made himself a hat"),
    ("The theme, then other things: shell, hemp, mania", "The theme, then other things: shell, hemp, mania"),
    ("ms and miss and human", "ms and miss and human"),  # not listed: milliseconds, a cache miss
])
def test_gender_swaps_exact(text, expected):
    assert Counterfactual.of("gender").swap(text) == expected


def test_swap_twice_restores_unambiguous_text():
    cf = Counterfactual.of("gender")
    text = "The King told his sons that the boys, Mr. Lee and the actress would come. HE IS HERE."
    assert cf.swap(text) != text
    assert cf.swap(cf.swap(text)) == text


def test_pairs_file(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("# animals\ncat dog\nmouse, rat  # comment\n")
    cf = Counterfactual.of(str(path))
    assert cf.swap("Cats chase MICE? The cat and the rats.") == "Dogs chase MICE? The dog and the mouses."
    assert cf.fingerprint()["counterfactual"] == "file"
    # The key follows the pairs, not the file's name or comments.
    other = tmp_path / "other.txt"
    other.write_text("cat,dog\nmouse rat # another comment\n")
    assert Counterfactual.of(str(other)).fingerprint() == cf.fingerprint()
    other.write_text("cat dog\nmouse hamster\n")
    assert Counterfactual.of(str(other)).fingerprint() != cf.fingerprint()
    assert Counterfactual.of("gender").fingerprint() != cf.fingerprint()


@pytest.mark.parametrize("content, message", [
    ("cat dog\nthree words here\n", r"line 2: expected two words"),
    ("cat dog\ncat fox\n", r"'cat' has two partners \('dog' and 'fox'\)"),
    ("cat cat\n", r"'cat' is paired with itself"),
    ("# nothing\n", r"no word pairs"),
])
def test_pairs_file_errors(tmp_path, content, message):
    path = tmp_path / "pairs.txt"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        Counterfactual.of(str(path))


def test_missing_file_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match=r"data.counterfactual = '.*nope.txt': expected \"gender\" or an existing"):
        Counterfactual.of(str(tmp_path / "nope.txt"))
    with pytest.raises(ConfigError, match=r"data.counterfactual = ''"):
        Counterfactual.of("")


def _docs(corpus, tokens) -> list[str]:
    tokens = np.asarray(tokens)
    cuts = np.flatnonzero(tokens == corpus.eos_id)
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [corpus.decode(tokens[s:e]) for s, e in zip(starts, cuts)]


def test_prepared_corpus_holds_mirrored_training_documents(tmp_path):
    names = ["Alice", "Bob", "Carol", "Dan", "Eve", "Frank", "Grace", "Heidi"]
    texts = [f"{n} said that he saw the king and his daughter at {i} o'clock." for i, n in enumerate(names * 5)]
    texts += [f"Document {i} has no listed word at all." for i in range(10)]
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    kw = {"vocab_size": 300, "val_fraction": 0.2, "cache_dir": tmp_path / "cache", "show_progress": False}
    cf = Counterfactual.of("gender")

    plain = prepare_corpus(str(source), **kw)
    augmented = prepare_corpus(str(source), augment=cf, **kw)
    assert augmented.key != plain.key and augmented.directory != plain.directory
    assert augmented.meta["augment"] == cf.fingerprint() and plain.meta["augment"] is None

    train, val = _docs(plain, plain.train_tokens), _docs(plain, plain.val_tokens)
    expected = [d for doc in train for d in ([doc, cf.swap(doc)] if cf.swap(doc) != doc else [doc])]
    assert _docs(augmented, augmented.train_tokens) == expected  # each copy right after its document
    assert _docs(augmented, augmented.val_tokens) == val          # validation untouched
    assert len(expected) > len(train) and "She said that she saw the queen and her son" not in " ".join(val)
    assert any(d.endswith("said that she saw the queen and her son at 0 o'clock.") for d in expected)
    # Cached like any prepared corpus: the second call reuses the directory.
    again = prepare_corpus(str(source), augment=cf, **kw)
    assert again.directory == augmented.directory and again.meta["build_id"] == augmented.meta["build_id"]


def test_config_key(tmp_path):
    from fastlm.train import load_config
    from fastlm.train.data import run_corpus

    with pytest.raises(ConfigError, match=r"data.counterfactual = 3: expected"):
        load_config("tiny", ["data.counterfactual=3"])
    overrides = ["data.builtin_modules=['bisect']", "data.vocab_size=300"]
    plain = run_corpus(load_config("tiny", overrides), None)
    corpus = run_corpus(load_config("tiny", overrides + ["data.counterfactual=gender"]), None)
    assert corpus.meta["augment"]["counterfactual"] == "gender" and corpus.key != plain.key
    # The pydoc topics use a few listed words ("he", "his", "male"...): those documents are mirrored.
    assert plain.meta["train_documents"] < corpus.meta["train_documents"]
