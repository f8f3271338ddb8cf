"""Trained vectors put the members of planted word classes nearest each other (precision@5),
which random vectors of the same vocabulary fail."""
import pytest
import torch

from fastlm.embeddings import WordVectors, train_glove, train_word2vec
from tests.embeddings.planted import CLASSES, planted_corpus, precision_at_k

THRESHOLD = 0.9


@pytest.fixture(scope="module")
def corpus():
    return planted_corpus()


def test_random_vectors_fail_the_threshold(corpus):
    wv = train_word2vec(corpus, dim=32, epochs=1, min_count=1, threads=1)
    random_wv = WordVectors(wv.words, torch.randn(len(wv.words), 32, generator=torch.Generator().manual_seed(0)))
    assert precision_at_k(random_wv.most_similar) < 0.5


@pytest.mark.parametrize("method", ["skipgram", "cbow"])
@pytest.mark.parametrize("threads", [1, 2])
def test_word2vec_finds_the_planted_classes(corpus, method, threads):
    wv = train_word2vec(corpus, method=method, dim=32, epochs=5, min_count=1, threads=threads, seed=1)
    assert {w for ws in CLASSES.values() for w in ws} <= set(wv.words)
    assert precision_at_k(wv.most_similar) >= THRESHOLD
    assert wv.meta["native"] and wv.meta["words_trained"] > 0


def test_glove_finds_the_planted_classes(corpus):
    wv = train_glove(corpus, dim=32, window=5, epochs=25, min_count=1, threads=2)
    costs = wv.meta["costs"]
    assert costs[-1] < costs[0] / 10  # AdaGrad converges
    assert precision_at_k(wv.most_similar) >= THRESHOLD


def test_one_thread_is_deterministic(corpus):
    a = train_word2vec(corpus, dim=16, epochs=1, min_count=1, threads=1, seed=3)
    b = train_word2vec(corpus, dim=16, epochs=1, min_count=1, threads=1, seed=3)
    c = train_word2vec(corpus, dim=16, epochs=1, min_count=1, threads=1, seed=4)
    assert torch.equal(a.vectors, b.vectors) and not torch.equal(a.vectors, c.vectors)


@pytest.mark.parametrize("method", ["skipgram", "cbow", "glove"])
def test_numpy_fallback_finds_the_planted_classes(monkeypatch, method):
    """Without the extension the same algorithm runs in numpy (slow: a small corpus, no subsampling)."""
    from fastlm import _native

    monkeypatch.setattr(_native, "AVAILABLE", False)
    corpus = planted_corpus(sentences=400, seed=2)
    if method == "glove":
        wv = train_glove(corpus, dim=16, window=5, epochs=200, min_count=1, threads=1)
    else:
        wv = train_word2vec(corpus, method=method, dim=16, epochs=5, min_count=1, sample=0, threads=1)
    assert not wv.meta["native"]
    assert precision_at_k(wv.most_similar) >= 0.75


def test_glove_native_and_numpy_costs_agree(monkeypatch):
    """Same pairs, same initial vectors: the native AdaGrad and the numpy one descend alike (the pair
    orders differ, so the costs agree closely, not exactly)."""
    from fastlm import _native

    corpus = planted_corpus(sentences=400, seed=2)
    native = train_glove(corpus, dim=8, window=3, epochs=10, min_count=1, threads=1)
    monkeypatch.setattr(_native, "AVAILABLE", False)
    numpy = train_glove(corpus, dim=8, window=3, epochs=10, min_count=1, threads=1)
    assert native.meta["pairs"] == numpy.meta["pairs"]
    for a, b in zip(native.meta["costs"], numpy.meta["costs"]):
        assert abs(a - b) <= 0.05 * b


@pytest.mark.parametrize("method", ["skipgram", "cbow"])
def test_as_good_as_gensim_on_the_planted_classes(corpus, method):
    """gensim's Word2Vec with the same settings on the same sentences is the reference: fastlm's
    precision@5 is within 0.05 of it, and their neighbour lists overlap."""
    from gensim.models import Word2Vec

    from fastlm.bench.suites.word2vec import neighbour_overlap
    from fastlm.embeddings import word_sentences

    sentences = word_sentences(corpus)
    ours = train_word2vec(sentences, method=method, dim=32, epochs=5, min_count=1, threads=1, seed=0)
    model = Word2Vec(sentences, vector_size=32, window=5, negative=5, sample=1e-3, min_count=1,
                     sg=int(method == "skipgram"), hs=0, workers=1, epochs=5, seed=0)
    theirs = WordVectors(list(model.wv.index_to_key), torch.from_numpy(model.wv.vectors.copy()))
    assert precision_at_k(ours.most_similar) >= precision_at_k(theirs.most_similar) - 0.05
    members = [w for ws in CLASSES.values() for w in ws]
    overlap = neighbour_overlap((ours.words, ours.vectors.numpy()), (theirs.words, theirs.vectors.numpy()), members, k=5)
    assert overlap >= 0.5
