// Torch glue for fastlm::glove_cooccurrences and fastlm::glove_train (native only:
// fastlm/embeddings/glove.py calls them, and runs its numpy fallback when the extension is missing).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>

#include "cpu/glove_kernel.h"

namespace fastlm::cpu {
namespace {

void check_1d(const at::Tensor& t, at::ScalarType dtype, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.dim() == 1 && t.is_contiguous(), op, ": ", name,
              " must be a contiguous 1-D CPU ", dtype, " tensor, got ", t.scalar_type(), " ", t.sizes());
}

void check_ids_below(const at::Tensor& ids, int64_t vocab, const char* op, const char* name) {
  if (ids.numel() == 0) return;
  const auto range = at::aminmax(ids);
  TORCH_CHECK(std::get<0>(range).item<int64_t>() >= 0 && std::get<1>(range).item<int64_t>() < vocab, op, ": ", name,
              " must lie in [0, ", vocab, ")");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> glove_cooccurrences(const at::Tensor& tokens,
                                                                   const at::Tensor& sentence_starts, int64_t vocab,
                                                                   int64_t window, int64_t threads) {
  constexpr const char* op = "fastlm::glove_cooccurrences";
  check_1d(tokens, at::kInt, op, "tokens");
  check_1d(sentence_starts, at::kLong, op, "sentence_starts");
  TORCH_CHECK(window >= 1 && threads >= 1 && vocab >= 0, op, ": need window >= 1, threads >= 1, vocab >= 0");
  const int64_t n_sentences = sentence_starts.size(0) - 1;
  TORCH_CHECK(n_sentences >= 0, op, ": sentence_starts needs at least one offset");
  const int64_t* starts = sentence_starts.data_ptr<int64_t>();
  TORCH_CHECK(starts[0] == 0 && starts[n_sentences] == tokens.size(0), op,
              ": sentence_starts must run from 0 to len(tokens)");
  for (int64_t i = 0; i < n_sentences; ++i) TORCH_CHECK(starts[i] <= starts[i + 1], op, ": sentence_starts must not decrease");
  check_ids_below(tokens, vocab, op, "tokens");
  glove::Cooccurrences c =
      glove::count_cooccurrences(tokens.data_ptr<int32_t>(), starts, n_sentences, window, threads);
  const int64_t n = static_cast<int64_t>(c.values.size());
  at::Tensor rows = at::empty({n}, at::kInt), cols = at::empty({n}, at::kInt), values = at::empty({n}, at::kFloat);
  if (n > 0) {
    std::memcpy(rows.data_ptr<int32_t>(), c.rows.data(), n * sizeof(int32_t));
    std::memcpy(cols.data_ptr<int32_t>(), c.cols.data(), n * sizeof(int32_t));
    std::memcpy(values.data_ptr<float>(), c.values.data(), n * sizeof(float));
  }
  return {rows, cols, values};
}

at::Tensor glove_train(const at::Tensor& rows, const at::Tensor& cols, const at::Tensor& values, const at::Tensor& w,
                       const at::Tensor& wc, const at::Tensor& b, const at::Tensor& bc, const at::Tensor& grad_w,
                       const at::Tensor& grad_wc, const at::Tensor& grad_b, const at::Tensor& grad_bc, double x_max,
                       double alpha, double lr, int64_t epochs, int64_t threads, int64_t seed) {
  constexpr const char* op = "fastlm::glove_train";
  check_1d(rows, at::kInt, op, "rows");
  check_1d(cols, at::kInt, op, "cols");
  check_1d(values, at::kFloat, op, "values");
  TORCH_CHECK(rows.size(0) == cols.size(0) && rows.size(0) == values.size(0), op, ": rows, cols, values lengths differ");
  TORCH_CHECK(w.dim() == 2, op, ": w must be (vocab, dim), got ", w.sizes());
  const int64_t vocab = w.size(0);
  for (const at::Tensor* m : {&w, &wc, &grad_w, &grad_wc}) {
    TORCH_CHECK(m->device().is_cpu() && m->scalar_type() == at::kFloat && m->is_contiguous() && m->sizes() == w.sizes(),
                op, ": w, wc, grad_w, grad_wc must be contiguous float32 CPU tensors of one shape, got ", m->sizes());
  }
  for (const at::Tensor* v : {&b, &bc, &grad_b, &grad_bc}) {
    check_1d(*v, at::kFloat, op, "the biases and their gradient sums");
    TORCH_CHECK(v->size(0) == vocab, op, ": biases must have vocab = ", vocab, " entries");
  }
  TORCH_CHECK(epochs >= 0 && threads >= 1 && x_max > 0 && lr > 0, op, ": need epochs >= 0, threads >= 1, x_max > 0, lr > 0");
  check_ids_below(rows, vocab, op, "rows");
  check_ids_below(cols, vocab, op, "cols");
  TORCH_CHECK(values.numel() == 0 || at::min(values).item<float>() > 0, op, ": co-occurrence values must be positive");
  glove::GloveArgs a;
  a.rows = rows.data_ptr<int32_t>();
  a.cols = cols.data_ptr<int32_t>();
  a.values = values.data_ptr<float>();
  a.n_pairs = rows.size(0);
  a.w = w.data_ptr<float>();
  a.wc = wc.data_ptr<float>();
  a.b = b.data_ptr<float>();
  a.bc = bc.data_ptr<float>();
  a.grad_w = grad_w.data_ptr<float>();
  a.grad_wc = grad_wc.data_ptr<float>();
  a.grad_b = grad_b.data_ptr<float>();
  a.grad_bc = grad_bc.data_ptr<float>();
  a.dim = w.size(1);
  a.x_max = static_cast<float>(x_max);
  a.alpha = static_cast<float>(alpha);
  a.lr = static_cast<float>(lr);
  a.epochs = epochs;
  a.threads = threads;
  a.seed = static_cast<uint64_t>(seed);
  at::Tensor costs = at::zeros({epochs}, at::kDouble);
  glove::train_glove(a, costs.data_ptr<double>());
  return costs;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastlm, m) {
  m.def("glove_cooccurrences(Tensor tokens, Tensor sentence_starts, int vocab, int window, int threads) "
        "-> (Tensor, Tensor, Tensor)",
        &glove_cooccurrences);
  m.def("glove_train(Tensor rows, Tensor cols, Tensor values, Tensor(a!) w, Tensor(b!) wc, Tensor(c!) b, "
        "Tensor(d!) bc, Tensor(e!) grad_w, Tensor(f!) grad_wc, Tensor(g!) grad_b, Tensor(h!) grad_bc, float x_max, "
        "float alpha, float lr, int epochs, int threads, int seed) -> Tensor",
        &glove_train);
}

}  // namespace fastlm::cpu
