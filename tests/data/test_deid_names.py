"""Person and location names (the name model + gazetteers), street addresses and ages."""
import random

import pytest

pytest.importorskip("faker")

from fastlm.data.deid import detect, names  # noqa: E402 (after the importorskip)
from fastlm.data.deid.detectors import detect_batch  # noqa: E402

# Templates the model never trained on (names.TRAIN_TEMPLATES holds the training ones).
HELD_OUT = (
    "Yesterday {PER} flew to {LOC} for a wedding.",
    "The package for {PER} arrived damaged.",
    "Invoice 42 was approved by {PER} on Tuesday.",
    "Please call {PER} back when you can.",
    "{PER} and her brother were in {LOC} all summer.",
)


def _held_out(n, seed):
    from faker import Faker

    rng = random.Random(seed)
    fakes = [Faker(loc) for loc in names.LOCALES]
    for i, f in enumerate(fakes):
        f.seed_instance(seed + i)
    return [names.labelled_sentence(rng.choice(HELD_OUT), fakes, rng) for _ in range(n)]


def test_names_in_held_out_templates():
    assert not set(HELD_OUT) & set(names.TRAIN_TEMPLATES)
    data = _held_out(300, seed=123)
    found = detect_batch([t for t, _ in data], ["person"])
    gold = [{(a, b) for a, b, k in spans if k == "person"} for _, spans in data]
    pred = [{(s.start, s.end) for s in f} for f in found]
    tp = sum(len(g & p) for g, p in zip(gold, pred))
    recall, precision = tp / sum(map(len, gold)), tp / max(1, sum(map(len, pred)))
    assert recall >= 0.9 and precision >= 0.9, (recall, precision)


def test_common_words_not_flagged():
    text = ("The function returns a new list. Each value is checked before the loop starts, "
            "and the Python interpreter raises an exception when the Index is out of range. "
            "On Monday the Committee met to discuss the Budget and the Annual Report.")
    assert detect(text, ["person", "location"]) == []


def test_batched_equals_one_by_one():
    texts = [t for t, _ in _held_out(20, seed=7)] + ["", "no names here."]
    assert detect_batch(texts, ["person", "location"]) == [detect(t, ["person", "location"]) for t in texts]


def test_name_offsets_exact_on_unicode():
    text = "😀 日本語: Zoë Müller-Lüdenscheidt wrote to Jürgen Weiß yesterday."
    got = [(s.text, s.type) for s in detect(text, ["person"])]
    assert got == [("Zoë Müller-Lüdenscheidt", "person"), ("Jürgen Weiß", "person")]


@pytest.mark.parametrize("address", [
    "221B Baker Street", "1600 Pennsylvania Avenue", "4, avenue Marques", "Via Roma, 83", "Calle Mayor 12",
    "Hauptstraße 5", "Kristin-Matthäi-Weg 8", "Fabriksgatan 36", "Keizersgracht 123", "ul. Długa 7",
])
def test_addresses(address):
    text = f"Please send it to {address} before noon."
    assert [s.text for s in detect(text, ["address"])] == [address]


@pytest.mark.parametrize("text", ["I have 3 Apple devices.", "Chapter 12 Road safety", "the 2 Main things",
                                  "route 66 was long"])
def test_address_near_misses(text):
    assert detect(text, ["address"]) == []


def test_ages():
    text = "a 45-year-old man, aged 30, a child 7 years old, 3 years ago"
    assert [s.text for s in detect(text, ["age"])] == ["45-year-old", "aged 30", "7 years old"]


def test_training_is_quick_and_learns():
    # The packaged model is trained the same way (python -m fastlm.data.deid.names); a short run must
    # already find names in plain contexts.
    import time

    t0 = time.perf_counter()
    model = names.train_name_model(steps=150, examples=2000)
    assert time.perf_counter() - t0 < 60
    found = model.find(["Please forward the report to Maria Rossi before Friday."])[0]
    assert any(a == 29 and kind == "person" for a, _, kind in found)
