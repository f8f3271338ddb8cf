"""Static word embeddings: word2vec (skip-gram, CBOW) and GloVe, trained by native loops.

    from fastlm.embeddings import train_word2vec, train_glove, WordVectors
    wv = train_word2vec(text, method="cbow", dim=100)
    wv.save_word2vec("vectors.bin", binary=True)   # gensim's KeyedVectors.load_word2vec_format reads it

`fastlm embeddings train CONFIG|preset` runs them from a TOML config (fastlm/embeddings/run.py).
"""
from fastlm.embeddings.glove import train_glove
from fastlm.embeddings.vectors import WordVectors
from fastlm.embeddings.vocab import Vocabulary, build_vocab, tokenize_words, word_sentences
from fastlm.embeddings.word2vec import train_word2vec

__all__ = ["Vocabulary", "WordVectors", "build_vocab", "tokenize_words", "train_glove", "train_word2vec",
           "word_sentences"]
