// word2vec (skip-gram and CBOW with negative sampling), torch-free: pointers and sizes.
//
// The training of Mikolov et al.'s word2vec.c, as gensim also runs it: frequent-word subsampling,
// noise words drawn from unigram^0.75 (an alias table: exact and O(1)), a reduced ("dynamic")
// window per centre word, a learning rate decaying linearly from alpha to min_alpha over all
// epochs, and Hogwild threads that update the shared matrices without locks.
#pragma once

#include <cstdint>

namespace fastlm::cpu::w2v {

struct Word2VecArgs {
  const int32_t* tokens = nullptr;           // word ids in [0, vocab), sentences back to back
  int64_t n_tokens = 0;
  const int64_t* sentence_starts = nullptr;  // n_sentences + 1 offsets into tokens
  int64_t n_sentences = 0;
  const int64_t* counts = nullptr;           // corpus count of each word (noise table, subsampling)
  int64_t vocab = 0;
  float* syn0 = nullptr;                     // (vocab, dim) input vectors: the embeddings
  float* syn1neg = nullptr;                  // (vocab, dim) output vectors of negative sampling
  int64_t dim = 0;
  bool cbow = false;
  int64_t window = 5;
  int64_t negative = 5;
  double sample = 1e-3;                      // <= 0: no subsampling
  float alpha = 0.025f;
  float min_alpha = 1e-4f;
  int64_t epochs = 5;
  int64_t threads = 1;
  uint64_t seed = 0;
};

// Trains syn0/syn1neg in place; returns the words trained (kept by subsampling), over all epochs.
int64_t train_word2vec(const Word2VecArgs& args);

}  // namespace fastlm::cpu::w2v
