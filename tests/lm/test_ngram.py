"""NGramLM against a plain-Python Chen & Goodman reference, KenLM's own query code, NLTK, and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastlm.lm import NGramLM, ngram_backend
from tests.lm.ngram_reference import BOS, EOS, ReferenceLM

SMOOTHINGS = ["modified_kneser_ney", "kneser_ney", "witten_bell", "add_k"]


def corpus(seed: int, docs: int = 40, vocab: int = 12, max_len: int = 25) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # a skewed distribution so that counts of counts t1..t4 are all non-zero (real discounts)
    p = 1.0 / np.arange(1, vocab + 1)
    return [rng.choice(vocab, size=rng.integers(0, max_len), p=p / p.sum()) for _ in range(docs)]


def reference_scores(ref: ReferenceLM, seq, bos: bool, eos: bool) -> list[float]:
    history = [BOS] if bos else []
    out = []
    for token in list(seq) + ([EOS] if eos else []):
        out.append(ref.logprob(token if token == EOS else int(token), history))
        history.append(token)
    return out


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("vocab_size", [None, 15])
def test_every_probability_matches_reference(smoothing, order, vocab_size):
    docs = corpus(order)
    lm = NGramLM.fit(docs, order=order, smoothing=smoothing, vocab_size=vocab_size, k=0.5)
    ref = ReferenceLM(docs, order, smoothing, vocab=vocab_size, k=0.5)
    if smoothing in ("modified_kneser_ney", "kneser_ney"):
        expected = torch.tensor([ref.discounts[n] for n in range(1, order + 1)], dtype=torch.float64)
        torch.testing.assert_close(lm.discounts, expected, rtol=1e-12, atol=1e-12)
    # every stored n-gram's probability, every order
    for n, (keys, log_prob, _) in enumerate(lm.tables, start=1):
        from fastlm.lm.ngram_keys import unpack
        for ids, lp in zip(unpack(keys.numpy(), n, lm.bits).tolist(), log_prob.tolist()):
            names = [BOS if i == lm.bos else EOS if i == lm.eos else "<unk>" if i == lm.unk else i for i in ids]
            if names[-1] == BOS:
                assert lp == pytest.approx(-99 * math.log(10))
                continue
            assert lp == pytest.approx(ref.logprob(names[-1], names[:-1]), abs=1e-10), (ids, n)
    # queries, with and without <s> / </s>, including unknown ids (-1, 13, 40)
    rng = np.random.default_rng(100 + order)
    rows = rng.integers(-1, 14, size=(3, 17))
    rows[0, 3], rows[1, 0] = 40, 13
    for bos in (True, False):
        for eos in (True, False):
            got = lm.logprob(torch.tensor(rows), bos=bos, eos=eos)
            assert got.shape == (3, 17 + eos) and got.dtype == torch.float64
            want = torch.tensor([reference_scores(ref, r, bos, eos) for r in rows], dtype=torch.float64)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_pruned_model_matches_reference(smoothing):
    docs = corpus(5, docs=60)
    lm = NGramLM.fit(docs, order=3, smoothing=smoothing, prune=[0, 1, 2])
    unpruned = NGramLM.fit(docs, order=3, smoothing=smoothing)
    assert lm.tables[2][0].shape[0] < unpruned.tables[2][0].shape[0]
    ref = ReferenceLM(docs, 3, smoothing, prune=[0, 1, 2])
    rows = np.random.default_rng(7).integers(0, 12, size=(4, 15))
    want = torch.tensor([reference_scores(ref, r, True, True) for r in rows], dtype=torch.float64)
    torch.testing.assert_close(lm.logprob(torch.tensor(rows), eos=True), want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("prune", [None, [0, 1]])
def test_next_token_distribution_sums_to_one(smoothing, prune):
    docs = corpus(11, docs=80, vocab=30)
    lm = NGramLM.fit(docs, order=4, smoothing=smoothing, vocab_size=32, prune=prune)
    rng = np.random.default_rng(3)
    for length in (0, 1, 2, 3, 6):
        for _ in range(3):
            history = torch.tensor(rng.integers(0, 32, size=length))
            full = lm.next_token_logprobs(history, include_unk=True)
            assert full.shape == (34,)
            assert float(full.exp().sum()) == pytest.approx(1.0, abs=1e-12)
            # the V + 1 vector is the same values without <unk>, and matches logprob
            torch.testing.assert_close(lm.next_token_logprobs(history), full[:33])
            w = int(rng.integers(0, 32))
            assert float(lm.logprob(torch.cat([history, torch.tensor([w])]))[-1]) == pytest.approx(float(full[w]))


def test_arpa_round_trip_and_kenlm_reads_it(tmp_path):
    docs = corpus(2, docs=100, vocab=40, max_len=30)
    rows = torch.tensor(np.random.default_rng(9).integers(-2, 45, size=(5, 30)))
    for smoothing, prune in [(s, None) for s in SMOOTHINGS] + [("modified_kneser_ney", [0, 1, 1])]:
        lm = NGramLM.fit(docs, order=4, smoothing=smoothing, vocab_size=42, prune=prune)
        path = tmp_path / f"{smoothing}-{prune is not None}.arpa"
        lm.to_arpa(path)
        assert not list(tmp_path.glob(".*tmp"))  # written atomically, nothing left behind
        back = NGramLM.from_arpa(path)
        assert (back.order, back.vocab_size, back.words) == (4, 42, None)
        for bos in (True, False):
            torch.testing.assert_close(back.logprob(rows, bos=bos, eos=True), lm.logprob(rows, bos=bos, eos=True),
                                       rtol=0, atol=1e-6)
        kenlm = pytest.importorskip("kenlm")
        model = kenlm.Model(str(path))  # KenLM's own query code on the file fastlm wrote
        for row in rows.tolist():
            words = " ".join(str(w) for w in row)  # negative / >= 42 ids are words KenLM does not know
            theirs = torch.tensor([s[0] for s in model.full_scores(words, bos=True, eos=True)], dtype=torch.float64)
            ours = lm.logprob(torch.tensor(row), bos=True, eos=True) / math.log(10)
            torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)  # KenLM stores floats


FOREIGN_ARPA = """Some tools write a header here.

\\data\\
ngram 1=6
ngram 2=4

\\1-grams:
-1.0\t<unk>\t0
-99\t<s>\t-0.30103
-0.5\t</s>
-0.4\tthe\t-0.2
-0.7\tcat\t-0.1
-0.9\tsat

\\2-grams:
-0.2\t<s> the
-0.3\tthe cat
-0.1\tcat sat
-0.05\tsat </s>

\\end\\
"""


def test_reads_other_tools_arpa_with_words(tmp_path):
    path = tmp_path / "words.arpa"
    path.write_text(FOREIGN_ARPA)
    lm = NGramLM.from_arpa(path)
    assert lm.words == ["the", "cat", "sat"] and lm.vocab_size == 3 and lm.order == 2
    ids = lm.word_ids(["the", "cat", "sat", "dog"])
    assert ids == [0, 1, 2, -1]
    got = lm.logprob(torch.tensor(ids), bos=True, eos=True) / math.log(10)
    # by hand: p(the|<s>) stored; p(cat|the) stored; p(sat|cat) stored; p(dog=<unk>|sat) = bo(sat) + p(<unk>)
    # = 0 + -1.0; p(</s>|<unk>) = bo(<unk>) + p(</s>) = 0 + -0.5
    torch.testing.assert_close(got, torch.tensor([-0.2, -0.3, -0.1, -1.0, -0.5], dtype=torch.float64))
    # a backoff: p(sat | the) = bo(the) + p(sat) = -0.2 - 0.9
    assert float(lm.logprob(torch.tensor([0, 2]), bos=False)[1]) / math.log(10) == pytest.approx(-1.1)
    out = tmp_path / "again.arpa"
    lm.to_arpa(out)
    assert "\tthe cat\n" in out.read_text()
    torch.testing.assert_close(NGramLM.from_arpa(out).logprob(torch.tensor(ids)), lm.logprob(torch.tensor(ids)))


@pytest.mark.parametrize("text, line, message", [
    ("nothing here\n", 2, "no \\\\data"),
    ("\\data\\\nngram 1=x\n", 2, "ngram 1="),
    ("\\data\\\nngram 1=2\n\n\\1-grams:\n-1\t<s>\n", 6, "fewer entries"),
    ("\\data\\\nngram 1=1\n\n\\1-grams:\n-1\t<s>\n-2\t</s>\n", 6, "more entries"),
    ("\\data\\\nngram 1=2\n\n\\1-grams:\n-1\t<s>\nabc\t</s>\n\n\\end\\\n", 6, "not a number"),
    ("\\data\\\nngram 1=1\nngram 2=1\n\n\\1-grams:\n-1\t</s>\n\n\\2-grams:\n-1\tfoo </s>\n\n\\end\\\n", 9,
     "no unigram entry"),
    ("\\data\\\nngram 1=1\n\n\\1-grams:\n-1\t</s>\t0\t1\n\n\\end\\\n", 5, "fields"),
    ("\\data\\\nngram 1=1\n\n\\1-grams:\n-1\t</s>\n\n", 7, "\\\\end"),
])
def test_malformed_arpa_names_the_line(tmp_path, text, line, message):
    path = tmp_path / "bad.arpa"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"line {line}: .*{message}"):
        NGramLM.from_arpa(path)


def test_bad_input_is_refused():
    docs = corpus(0)
    with pytest.raises(ValueError, match="order"):
        NGramLM.fit(docs, order=0)
    with pytest.raises(ValueError, match="empty corpus"):
        NGramLM.fit([])
    with pytest.raises(ValueError, match="empty corpus"):
        NGramLM.fit([np.array([], dtype=np.int64)])
    with pytest.raises(ValueError, match="smoothing"):
        NGramLM.fit(docs, smoothing="good_turing")
    with pytest.raises(ValueError, match=">= 0"):
        NGramLM.fit([np.array([1, -2])])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        NGramLM.fit([np.array([1, 20])], vocab_size=10)
    with pytest.raises(ValueError, match="integer"):
        NGramLM.fit([np.array([1.5, 2.0])])
    with pytest.raises(ValueError, match="prune"):
        NGramLM.fit(docs, prune=[1, 2])
    with pytest.raises(ValueError, match="prune"):
        NGramLM.fit(docs, prune=[0, 3, 1])
    with pytest.raises(ValueError, match="k must be"):
        NGramLM.fit(docs, smoothing="add_k", k=0)
    with pytest.raises(ValueError, match="discount"):
        NGramLM.fit(docs, smoothing="kneser_ney", discount=1.5)
    with pytest.raises(ValueError, match="key bits"):
        NGramLM.fit([np.array([2**40])], order=4)


def test_fallback_without_native_gives_the_same_model(monkeypatch):
    docs = corpus(4, docs=30)
    rows = torch.tensor(np.random.default_rng(1).integers(-1, 14, size=(2, 20)))
    for smoothing in SMOOTHINGS:
        native = NGramLM.fit(docs, order=3, smoothing=smoothing, prune=[0, 0, 1])
        with monkeypatch.context() as m:
            m.setattr(ngram_backend, "native", lambda: False)
            fallback = NGramLM.fit(docs, order=3, smoothing=smoothing, prune=[0, 0, 1])
            fallback_scores = fallback.logprob(rows, eos=True)
        for a, b in zip(native.tables, fallback.tables):
            assert torch.equal(a[0], b[0])
            torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-12)
            torch.testing.assert_close(a[2], b[2], rtol=0, atol=1e-12)
        torch.testing.assert_close(fallback_scores, native.logprob(rows, eos=True), rtol=0, atol=1e-12)


def test_documents_as_rows_lists_and_generators():
    docs = corpus(13, docs=10)
    reference = NGramLM.fit(docs, order=3)
    probe = torch.tensor([1, 2, 3, 4])
    from_generator = NGramLM.fit((torch.from_numpy(d) for d in docs), order=3)
    torch.testing.assert_close(from_generator.logprob(probe), reference.logprob(probe))
    equal_length = [d[:5] for d in docs if len(d) >= 5]
    rows = NGramLM.fit(torch.from_numpy(np.stack(equal_length)), order=3)
    torch.testing.assert_close(rows.logprob(probe), NGramLM.fit(equal_length, order=3).logprob(probe))
    one = NGramLM.fit(list(docs[0]), order=2)  # a list of ints is one document
    assert one.tables[1][0].shape[0] == len(set(zip([-1] + list(docs[0]), list(docs[0]) + [-2])))


def test_split_documents():
    from fastlm.lm.ngram import split_documents

    parts = split_documents(np.array([5, 1, 2, 0, 3, 0, 0, 4], dtype=np.uint16), separator=0)
    assert [p.tolist() for p in parts] == [[5, 1, 2], [3], [4]]
    assert [p.tolist() for p in split_documents(torch.tensor([0, 7, 0]), separator=0)] == [[7]]


def test_shapes_lists_and_windows():
    lm = NGramLM.fit(corpus(6), order=3)
    seqs = [torch.tensor([1, 2, 3]), torch.tensor([4]), torch.tensor([], dtype=torch.int64)]
    out = lm.logprob(seqs, eos=True)
    assert [o.shape[0] for o in out] == [4, 2, 1]
    for s, o in zip(seqs, out):
        torch.testing.assert_close(o, lm.logprob(s, eos=True))
    # bos=False: the first token has an empty history (its unigram probability)
    window = torch.tensor([[5, 1, 2, 3], [0, 0, 1, 1]])
    scores = lm.logprob(window, bos=False)
    assert float(scores[0, 0]) == pytest.approx(float(lm.logprob(torch.tensor([5]), bos=False)[0]))
    assert float(scores[0, 3]) == pytest.approx(float(lm.logprob(torch.tensor([1, 2, 3]), bos=False)[2]))
    ppl = lm.perplexity(window, bos=False, eos=False)
    assert ppl == pytest.approx(math.exp(-float(scores.mean())))
    assert math.isfinite(lm.perplexity(torch.tensor([999, 1000, -5])))  # all unknown: still finite


def test_generate():
    lm = NGramLM.fit(corpus(8, docs=60), order=3)
    prompt = torch.tensor([0, 1])
    greedy = lm.generate(prompt, 20, temperature=0)
    assert torch.equal(greedy[:2], prompt)
    for t in range(2, len(greedy)):  # each greedy step is the argmax of the next-token distribution
        assert int(greedy[t]) == int(torch.argmax(lm.next_token_logprobs(greedy[:t])))
    if len(greedy) < 22:  # stopped early: </s> was the argmax
        assert int(torch.argmax(lm.next_token_logprobs(greedy))) == lm.vocab_size
    assert torch.equal(lm.generate(prompt, 20, top_k=1, generator=torch.Generator().manual_seed(0)), greedy)
    a = lm.generate(prompt, 30, generator=torch.Generator().manual_seed(5))
    b = lm.generate(prompt, 30, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and int(a.max()) < lm.vocab_size


def test_matches_nltk_kneser_ney_interpolated():
    """NLTK's KneserNeyInterpolated = kneser_ney with a fixed discount and none at the unigram level
    (NLTK's unigrams are continuation counts with no uniform part), on histories without <s>."""
    lm_module = pytest.importorskip("nltk.lm")
    from nltk.util import everygrams

    docs = corpus(12, docs=25, vocab=8, max_len=12)
    order, d = 3, 0.3
    padded = [[BOS] + [str(t) for t in doc] + [EOS] for doc in docs]
    nltk_lm = lm_module.KneserNeyInterpolated(order, discount=d)
    nltk_lm.fit([list(everygrams(p, max_len=order)) for p in padded], [w for p in padded for w in p])
    lm = NGramLM.fit(docs, order=order, smoothing="kneser_ney", discount=[0.0, d, d])
    rows = torch.tensor(np.random.default_rng(2).integers(0, 8, size=(3, 10)))
    ours = lm.logprob(rows, bos=False, eos=True)
    for r, row in enumerate(rows.tolist()):
        words = [str(w) for w in row] + [EOS]
        for t, word in enumerate(words):
            theirs = nltk_lm.score(word, words[max(0, t - order + 1):t])
            assert float(ours[r, t]) == pytest.approx(math.log(theirs), abs=1e-9), (r, t)


@pytest.mark.skipif(not ngram_backend.native(), reason="the native ops' work split")
@pytest.mark.parametrize("smoothing", ["modified_kneser_ney", "witten_bell"])
def test_blocked_counting_and_chunked_sorts_change_nothing(smoothing):
    """Tiny blocks and sort chunks (several merges, several threads' sorts) give the same tables."""
    docs = corpus(21, docs=300, vocab=50, max_len=60)
    V = 50
    stream = np.concatenate([np.concatenate([[V + 1], d, [V]]) for d in docs]).astype(np.int64)
    kwargs = {"order": 4, "smoothing": smoothing, "bits": 6, "vocab_size": V, "all_vocab": True, "k": 1.0,
              "discounts": [], "prune": []}
    whole = ngram_backend.estimate(stream, **kwargs)
    split = ngram_backend.estimate(stream, block=97, sort_chunk=64, **kwargs)
    for a, b in zip(whole.tables, split.tables):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert len(stream) > 20 * 97 and whole.tables[3][0].shape[0] > 8 * 64  # the split path really ran


def test_works_without_the_compiled_extension(tmp_path):
    """A fresh process where fastlm._C cannot be imported: fit, query and ARPA on the fallback."""
    import os
    import subprocess
    import sys

    docs = corpus(17, docs=20)
    native = NGramLM.fit(docs, order=3)
    rows = np.random.default_rng(4).integers(-1, 14, size=(2, 12))
    np.save(tmp_path / "rows.npy", rows)
    np.savez(tmp_path / "docs.npz", *docs)
    script = f"""
import sys, warnings
sys.modules["fastlm._C"] = None  # the import of the extension fails
warnings.simplefilter("ignore")
import numpy as np, torch
from fastlm import _native
from fastlm.lm import NGramLM, ngram_backend
assert not _native.AVAILABLE and not ngram_backend.native()
with np.load({str(tmp_path / "docs.npz")!r}) as saved:
    docs = [saved[f"arr_{{i}}"] for i in range(len(saved.files))]
lm = NGramLM.fit(docs, order=3)
lm.to_arpa({str(tmp_path / "fallback.arpa")!r})
back = NGramLM.from_arpa({str(tmp_path / "fallback.arpa")!r})
rows = torch.from_numpy(np.load({str(tmp_path / "rows.npy")!r}))
torch.save([lm.logprob(rows, eos=True), back.logprob(rows, eos=True)], {str(tmp_path / "out.pt")!r})
"""
    env = {**os.environ, "FASTLM_REQUIRE_NATIVE": "0"}
    done = subprocess.run([sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    ours, back = torch.load(tmp_path / "out.pt", weights_only=True)
    want = native.logprob(torch.from_numpy(rows), eos=True)
    torch.testing.assert_close(ours, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(back, want, rtol=0, atol=1e-6)


def test_discounts_when_no_ngram_is_seen_four_times():
    """lmplz's rule: D1, D2, D3+ need n1, n2, n3 (n4 = 0 gives D3+ = 3), else 0.5, 1, 1.5."""
    docs = [np.array([1, 2, 3, 1, 2, 3, 1, 2, 4, 5, 6, 5, 6, 7, 8, 7, 9])] * 1 + [np.array([1, 2, 3, 4])] * 2
    lm = NGramLM.fit(docs, order=3)
    ref = ReferenceLM(docs, 3, "modified_kneser_ney")
    t = lm.counts_of_counts.tolist()
    assert any(row[3] == 0 and row[2] > 0 for row in t)  # the case of interest occurs
    assert t == [ref.counts_of_counts(n) for n in (1, 2, 3)]
    expected = torch.tensor([ref.discounts[n] for n in (1, 2, 3)], dtype=torch.float64)
    torch.testing.assert_close(lm.discounts, expected, rtol=1e-12, atol=1e-12)
    rows = torch.tensor([[1, 2, 3, 4, 5, 6, 9]])
    want = torch.tensor([reference_scores(ref, rows[0].tolist(), True, True)], dtype=torch.float64)
    torch.testing.assert_close(lm.logprob(rows, eos=True), want, rtol=0, atol=1e-10)
