"""Bad input to the trainers: clear ValueErrors, before any native code runs; the vocabulary;
the native ops' own checks; co-occurrence counts against a hand count."""
import numpy as np
import pytest
import torch

from fastlm.embeddings import build_vocab, tokenize_words, train_glove, train_word2vec, word_sentences


def test_tokenizer_and_vocabulary():
    assert tokenize_words("Don't split_snake CASE 42x") == ["don't", "split", "snake", "case", "42x"]
    sentences = word_sentences("b a b\n\nc b a\n", lowercase=True)
    assert sentences == [["b", "a", "b"], ["c", "b", "a"]]
    vocab = build_vocab(sentences, min_count=2)
    assert vocab.words == ["b", "a"] and vocab.counts.tolist() == [3, 2]
    tokens, starts = vocab.encode(sentences + [["c"]])  # "c" is dropped, and its sentence with it
    assert tokens.tolist() == [0, 1, 0, 0, 1] and starts.tolist() == [0, 3, 5]


@pytest.mark.parametrize("train", [train_word2vec, train_glove])
def test_bad_corpora(train):
    with pytest.raises(ValueError, match="no words"):
        train("", min_count=1)
    with pytest.raises(ValueError, match="no word occurs min_count = 5 times"):
        train("one two three\nfour", min_count=5)
    with pytest.raises(ValueError, match="a corpus item must be a text"):
        train([1, 2], min_count=1)
    with pytest.raises(ValueError, match="dim must be > 0"):
        train("a b", dim=0, min_count=1)
    with pytest.raises(ValueError, match="tokens = 'bpe' needs a tokenizer"):
        train("a b", tokens="bpe", min_count=1)


def test_bad_word2vec_settings():
    with pytest.raises(ValueError, match="method must be one of skipgram, cbow"):
        train_word2vec("a b", method="glove", min_count=1)
    with pytest.raises(ValueError, match="negative must be >= 1"):
        train_word2vec("a b", negative=0, min_count=1)
    with pytest.raises(ValueError, match="min_alpha"):
        train_word2vec("a b", alpha=0.01, min_alpha=0.1, min_count=1)


def test_bpe_tokens_train_on_the_tokenizers_strings():
    from fastlm.data.tokenizer import train_bpe

    text = "\n".join(["the cat sat on the mat", "the dog sat on the log"] * 50)
    tok = train_bpe([text], vocab_size=300)
    wv = train_word2vec(text, tokens="bpe", tokenizer=tok, min_count=1, dim=8, epochs=1)
    assert "Ġcat" in wv.words and "the" in wv.words  # a leading space is "Ġ"; a line's first word has none


def test_native_ops_reject_bad_arrays():
    tokens = torch.tensor([0, 1, 5], dtype=torch.int32)
    starts = torch.tensor([0, 3])
    counts = torch.tensor([3, 2, 1])
    syn = torch.zeros(3, 4)
    with pytest.raises(RuntimeError, match=r"token ids must lie in \[0, 3\)"):
        torch.ops.fastlm.word2vec_train(tokens, starts, counts, syn, syn.clone(), False, 2, 2, 0.0, 0.025, 1e-4, 1, 1, 0)
    with pytest.raises(RuntimeError, match="sentence_starts must run from 0 to len"):
        torch.ops.fastlm.word2vec_train(tokens[:2], starts, counts, syn, syn.clone(), False, 2, 2, 0.0, 0.025, 1e-4,
                                        1, 1, 0)
    with pytest.raises(RuntimeError, match="tokens must lie in"):
        torch.ops.fastlm.glove_cooccurrences(tokens, starts, 3, 2, 1)


@pytest.mark.parametrize("threads", [1, 3])
def test_cooccurrence_counts_by_hand(threads):
    # sentences [0 1 2 1] and [2 0]; window 2, weight 1/distance, both directions
    tokens = torch.tensor([0, 1, 2, 1, 2, 0], dtype=torch.int32)
    starts = torch.tensor([0, 4, 6])
    rows, cols, values = torch.ops.fastlm.glove_cooccurrences(tokens, starts, 3, 2, threads)
    expected = np.zeros((3, 3))
    for a, b, w in [(1, 0, 1), (2, 1, 1), (2, 0, 0.5), (1, 2, 1), (1, 1, 0.5), (0, 2, 1)]:
        expected[a, b] += w
        expected[b, a] += w
    got = np.zeros((3, 3))
    got[rows.numpy(), cols.numpy()] = values.numpy()
    np.testing.assert_allclose(got, expected)
    keys = (rows.long() * 3 + cols.long()).tolist()
    assert keys == sorted(keys) and len(keys) == int((expected != 0).sum())


@pytest.mark.parametrize("method", ["skipgram", "cbow"])
def test_odd_shapes_train_without_error(method):
    """More threads than sentences, one-word sentences (no context), one word in the vocabulary."""
    wv = train_word2vec([["a"], ["a", "b"], ["b"]], method=method, min_count=1, dim=3, threads=8, sample=0)
    assert wv.vectors.shape == (2, 3) and torch.isfinite(wv.vectors).all()
    wv = train_word2vec([["a"], ["a"]], method=method, min_count=1, dim=5, threads=2)
    assert wv.words == ["a"] and torch.isfinite(wv.vectors).all()
    gv = train_glove([["a"], ["a", "b", "a"]], min_count=1, dim=3, threads=8)
    assert gv.meta["pairs"] == 3 and torch.isfinite(gv.vectors).all()
