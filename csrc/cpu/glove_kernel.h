// GloVe (Pennington et al. 2014), torch-free: co-occurrence counting and AdaGrad training.
#pragma once

#include <cstdint>
#include <vector>

namespace fastlm::cpu::glove {

// Sparse co-occurrence matrix as (row, col, value) triples sorted by (row, col).
struct Cooccurrences {
  std::vector<int32_t> rows, cols;
  std::vector<float> values;
};

// Counts pairs within `window` words of each other inside a sentence, both directions, each
// weighted 1 / distance (GloVe's cooccur.c with a symmetric window). Threads count disjoint
// sentence ranges into their own hash maps, merged at the end.
Cooccurrences count_cooccurrences(const int32_t* tokens, const int64_t* sentence_starts, int64_t n_sentences,
                                  int64_t window, int64_t threads);

struct GloveArgs {
  const int32_t* rows = nullptr;
  const int32_t* cols = nullptr;
  const float* values = nullptr;
  int64_t n_pairs = 0;
  float* w = nullptr;        // (vocab, dim) word vectors
  float* wc = nullptr;       // (vocab, dim) context vectors
  float* b = nullptr;        // (vocab) word biases
  float* bc = nullptr;       // (vocab) context biases
  float* grad_w = nullptr;   // AdaGrad sums of squared gradients, same shapes, start at 1
  float* grad_wc = nullptr;
  float* grad_b = nullptr;
  float* grad_bc = nullptr;
  int64_t dim = 0;
  float x_max = 100.f;
  float alpha = 0.75f;
  float lr = 0.05f;
  int64_t epochs = 1;
  int64_t threads = 1;
  uint64_t seed = 0;
};

// Minimises sum f(X_ij) (w_i . wc_j + b_i + bc_j - log X_ij)^2 with f(x) = min(1, (x / x_max)^alpha)
// by AdaGrad over the pairs in a fresh random order each epoch (Hogwild threads). Writes each
// epoch's mean weighted squared error (x 0.5, as glove.c reports it) to epoch_costs.
void train_glove(const GloveArgs& args, double* epoch_costs);

}  // namespace fastlm::cpu::glove
