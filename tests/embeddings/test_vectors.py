"""WordVectors: the word2vec text/binary files (read back and by gensim), safetensors, and the
neighbour/analogy queries against a brute-force cosine computation and gensim's."""
import numpy as np
import pytest
import torch

from fastlm.embeddings import WordVectors

WORDS = ["the", "cat", "dog", "köln", "x1", "don't", "zebra", "a", "b", "c", "d", "e"]


@pytest.fixture
def wv():
    g = torch.Generator().manual_seed(0)
    return WordVectors(WORDS, torch.randn(len(WORDS), 7, generator=g))


@pytest.mark.parametrize("binary", [False, True])
def test_word2vec_round_trip_and_gensim_reads_it(tmp_path, wv, binary):
    from gensim.models import KeyedVectors

    path = wv.save_word2vec(tmp_path / ("v.bin" if binary else "v.txt"), binary=binary)
    back = WordVectors.load_word2vec(path)  # binary or not: decided by the content
    assert back.words == WORDS
    torch.testing.assert_close(back.vectors, wv.vectors, rtol=0, atol=0)  # %.9g and float32 bytes are exact
    kv = KeyedVectors.load_word2vec_format(str(path), binary=binary)
    assert list(kv.index_to_key) == WORDS
    np.testing.assert_array_equal(kv.vectors, wv.vectors.numpy())


def test_we_read_what_gensim_writes(tmp_path, wv):
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vector_size=7)
    kv.add_vectors(WORDS, wv.vectors.numpy())
    for binary in (False, True):
        path = tmp_path / f"g{binary}"
        kv.save_word2vec_format(str(path), binary=binary)
        back = WordVectors.load(path)
        assert back.words == WORDS
        torch.testing.assert_close(back.vectors, wv.vectors, rtol=1e-6, atol=1e-6)


def test_safetensors_round_trip(tmp_path, wv):
    back = WordVectors.load(wv.save(tmp_path / "v.safetensors"))
    assert back.words == WORDS and torch.equal(back.vectors, wv.vectors)


def test_most_similar_is_the_brute_force_cosine_ranking(wv):
    m = wv.vectors.double()
    q = m[WORDS.index("cat")]
    cos = [(w, float(m[i] @ q / (m[i].norm() * q.norm()))) for i, w in enumerate(WORDS) if w != "cat"]
    expected = sorted(cos, key=lambda ws: -ws[1])[:4]
    got = wv.most_similar("cat", k=4)
    assert [w for w, _ in got] == [w for w, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=1e-5)


def test_analogy_matches_gensim(wv):
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vector_size=7)
    kv.add_vectors(WORDS, wv.vectors.numpy())
    expected = kv.most_similar(positive=["dog", "zebra"], negative=["cat"], topn=5)
    got = wv.analogy("cat", "dog", "zebra", k=5)
    assert [w for w, _ in got] == [w for w, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=1e-5)
    assert not {"cat", "dog", "zebra"} & {w for w, _ in got}


def test_unknown_word_and_bad_input_are_clear_errors(tmp_path, wv):
    with pytest.raises(ValueError, match="'nope' is not in the vocabulary"):
        wv.most_similar("nope")
    with pytest.raises(ValueError, match="'nope' is not in the vocabulary"):
        wv.analogy("cat", "nope", "dog")
    with pytest.raises(ValueError, match="k must be >= 1"):
        wv.most_similar("cat", k=0)
    with pytest.raises(ValueError, match="whitespace"):
        WordVectors(["a b"], torch.zeros(1, 2)).save_word2vec(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="duplicates"):
        WordVectors(["a", "a"], torch.zeros(2, 2))
    (tmp_path / "bad.txt").write_text("hello world\n")
    with pytest.raises(ValueError, match="not a word2vec file"):
        WordVectors.load(tmp_path / "bad.txt")
    (tmp_path / "short.txt").write_text("3 2\na 1 2\n")
    with pytest.raises(ValueError, match="header says 3 words"):
        WordVectors.load(tmp_path / "short.txt")
    wv.save_word2vec(tmp_path / "t.bin", binary=True)
    (tmp_path / "t.bin").write_bytes((tmp_path / "t.bin").read_bytes()[:-20])
    with pytest.raises(ValueError, match="truncated"):
        WordVectors.load_word2vec(tmp_path / "t.bin", binary=True)
