// Torch glue for fastlm::word2vec_train (native only: fastlm/embeddings/word2vec.py calls it, and
// runs its numpy fallback when the extension is missing). Trains syn0/syn1neg in place.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/word2vec_kernel.h"

namespace fastlm::cpu {
namespace {

void check_ids(const at::Tensor& t, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.dim() == 1 && t.is_contiguous(),
              "fastlm::word2vec_train: ", name, " must be a contiguous 1-D CPU ", dtype, " tensor, got ",
              t.scalar_type(), " ", t.sizes());
}

void check_matrix(const at::Tensor& t, int64_t vocab, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 2 && t.is_contiguous() &&
                  t.size(0) == vocab,
              "fastlm::word2vec_train: ", name, " must be a contiguous (vocab, dim) float32 CPU tensor with vocab = ",
              vocab, ", got ", t.scalar_type(), " ", t.sizes());
}

int64_t word2vec_train(const at::Tensor& tokens, const at::Tensor& sentence_starts, const at::Tensor& counts,
                       const at::Tensor& syn0, const at::Tensor& syn1neg, bool cbow, int64_t window, int64_t negative,
                       double sample, double alpha, double min_alpha, int64_t epochs, int64_t threads, int64_t seed) {
  check_ids(tokens, at::kInt, "tokens");
  check_ids(sentence_starts, at::kLong, "sentence_starts");
  check_ids(counts, at::kLong, "counts");
  const int64_t vocab = counts.size(0);
  check_matrix(syn0, vocab, "syn0");
  check_matrix(syn1neg, vocab, "syn1neg");
  TORCH_CHECK(syn0.size(1) == syn1neg.size(1), "fastlm::word2vec_train: syn0 and syn1neg widths differ");
  TORCH_CHECK(window >= 1 && negative >= 0 && epochs >= 0 && threads >= 1,
              "fastlm::word2vec_train: need window >= 1, negative >= 0, epochs >= 0, threads >= 1");
  const int64_t n_sentences = sentence_starts.size(0) - 1;
  TORCH_CHECK(n_sentences >= 0, "fastlm::word2vec_train: sentence_starts needs at least one offset");
  const int64_t* starts = sentence_starts.data_ptr<int64_t>();
  TORCH_CHECK(starts[0] == 0 && starts[n_sentences] == tokens.size(0),
              "fastlm::word2vec_train: sentence_starts must run from 0 to len(tokens)");
  for (int64_t i = 0; i < n_sentences; ++i) {
    TORCH_CHECK(starts[i] <= starts[i + 1], "fastlm::word2vec_train: sentence_starts must not decrease");
  }
  if (tokens.numel() > 0) {
    const auto range = at::aminmax(tokens);
    TORCH_CHECK(std::get<0>(range).item<int>() >= 0 && std::get<1>(range).item<int>() < vocab,
                "fastlm::word2vec_train: token ids must lie in [0, ", vocab, ")");
  }
  w2v::Word2VecArgs a;
  a.tokens = tokens.data_ptr<int32_t>();
  a.n_tokens = tokens.size(0);
  a.sentence_starts = starts;
  a.n_sentences = n_sentences;
  a.counts = counts.data_ptr<int64_t>();
  a.vocab = vocab;
  a.syn0 = syn0.data_ptr<float>();
  a.syn1neg = syn1neg.data_ptr<float>();
  a.dim = syn0.size(1);
  a.cbow = cbow;
  a.window = window;
  a.negative = negative;
  a.sample = sample;
  a.alpha = static_cast<float>(alpha);
  a.min_alpha = static_cast<float>(min_alpha);
  a.epochs = epochs;
  a.threads = threads;
  a.seed = static_cast<uint64_t>(seed);
  return w2v::train_word2vec(a);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastlm, m) {
  m.def("word2vec_train(Tensor tokens, Tensor sentence_starts, Tensor counts, Tensor(a!) syn0, Tensor(b!) syn1neg, "
        "bool cbow, int window, int negative, float sample, float alpha, float min_alpha, int epochs, int threads, "
        "int seed) -> int",
        &word2vec_train);
}

}  // namespace fastlm::cpu
