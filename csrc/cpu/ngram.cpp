// Torch glue for the n-gram kernels (ngram_kernel.h): native-only ops, defined here with their
// schemas; fastlm/lm/ngram_native.py is their only caller (it has a numpy fallback of its own).
//
// A table of order n travels as three tensors: keys int64 (m, 2) = the 128-bit keys little-endian
// (column 0 the low 64 bits), so the tensor's memory is the Key array itself; log_prob and
// log_backoff float64 (m,), natural logs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <stdexcept>
#include <vector>

#include "cpu/ngram_kernel.h"

namespace fastlm::cpu {
namespace {

ngram::ParallelFor torch_parallel_for() {
  return [](int64_t begin, int64_t end, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
    if (begin >= end) return;
    at::parallel_for(begin, end, grain, body);
  };
}

at::Tensor keys_tensor(const std::vector<ngram::Key>& keys) {
  at::Tensor out = at::empty({static_cast<int64_t>(keys.size()), 2}, at::kLong);
  if (!keys.empty()) std::memcpy(out.data_ptr<int64_t>(), keys.data(), keys.size() * sizeof(ngram::Key));
  return out;
}

at::Tensor doubles_tensor(const std::vector<double>& values) {
  at::Tensor out = at::empty({static_cast<int64_t>(values.size())}, at::kDouble);
  if (!values.empty()) std::memcpy(out.data_ptr<double>(), values.data(), values.size() * sizeof(double));
  return out;
}

// Returns [keys_1, log_prob_1, log_backoff_1, ..., keys_N, ..., discounts (N, 3), counts_of_counts (N, 4)].
std::vector<at::Tensor> ngram_estimate(const at::Tensor& stream_in, int64_t order, int64_t smoothing, int64_t bits,
                                       int64_t vocab_words, bool all_vocab, double add_k,
                                       at::ArrayRef<double> discounts, at::ArrayRef<int64_t> prune, int64_t block,
                                       int64_t sort_chunk) {
  constexpr const char* op = "fastlm::ngram_estimate";
  TORCH_CHECK(stream_in.dim() == 1 && stream_in.device().is_cpu(), op, ": stream must be a 1-D CPU tensor");
  TORCH_CHECK(order >= 1 && bits >= 1 && order * bits <= 128, op, ": need 1 <= order and order * bits <= 128");
  TORCH_CHECK(smoothing >= 0 && smoothing <= 3, op, ": unknown smoothing ", smoothing);
  TORCH_CHECK(discounts.empty() || static_cast<int64_t>(discounts.size()) == 3 * order, op,
              ": discounts must be empty or 3 per order");
  const at::Tensor stream = stream_in.to(at::kLong).contiguous();
  const int64_t* s = stream.data_ptr<int64_t>();
  const int64_t limit = (bits >= 63) ? INT64_MAX : ((int64_t{1} << bits) - 1);
  const int64_t length = stream.numel();
  for (int64_t i = 0; i < length; ++i)
    TORCH_CHECK(s[i] >= 0 && s[i] < limit && s[i] <= vocab_words + 2, op, ": id out of range at ", i);

  ngram::EstimateOptions options;
  options.order = static_cast<int>(order);
  options.smoothing = static_cast<ngram::Smoothing>(smoothing);
  options.bits = static_cast<int>(bits);
  options.vocab_words = vocab_words;
  options.all_vocab = all_vocab;
  options.add_k = add_k;
  options.discounts.assign(discounts.begin(), discounts.end());
  options.prune.assign(prune.begin(), prune.end());
  TORCH_CHECK(block >= 1 && sort_chunk >= 1, op, ": block and sort_chunk must be >= 1");
  options.block = block;
  options.sort_chunk = sort_chunk;
  ngram::EstimateResult result;
  try {
    result = ngram::estimate(s, length, options, torch_parallel_for());
  } catch (const std::invalid_argument& error) {
    TORCH_CHECK(false, op, ": ", error.what());
  }
  std::vector<at::Tensor> out;
  for (ngram::OrderTable& table : result.tables) {
    out.push_back(keys_tensor(table.keys));
    out.push_back(doubles_tensor(table.log_prob));
    out.push_back(doubles_tensor(table.log_backoff));
    table = ngram::OrderTable();  // free it now: peak memory is one copy of the model, not two
  }
  out.push_back(doubles_tensor(result.discounts).view({order, 3}));
  at::Tensor t = at::empty({order, 4}, at::kLong);
  std::memcpy(t.data_ptr<int64_t>(), result.counts_of_counts.data(), 4 * order * sizeof(int64_t));
  out.push_back(t);
  return out;
}

// log p of tokens[r, t] for start <= t < lengths[r] -> (rows, width - start) float64 (0 elsewhere).
// The hash index of one order's sorted keys (see hash_slots), built once per model.
at::Tensor ngram_hash_index(const at::Tensor& keys) {
  TORCH_CHECK(keys.dim() == 2 && keys.size(1) == 2 && keys.scalar_type() == at::kLong && keys.is_contiguous(),
              "fastlm::ngram_hash_index: keys must be contiguous int64 (m, 2)");
  at::Tensor slots = at::empty({ngram::hash_slot_count(keys.size(0))}, at::kLong);
  ngram::hash_slots(reinterpret_cast<const ngram::Key*>(keys.data_ptr<int64_t>()), keys.size(0),
                    slots.data_ptr<int64_t>(), slots.numel());
  return slots;
}

at::Tensor ngram_query(at::TensorList keys, at::TensorList log_prob, at::TensorList log_backoff, at::TensorList slots,
                       int64_t bits,
                       double unk_log_prob, const at::Tensor& tokens_in, const at::Tensor& lengths_in, int64_t start) {
  constexpr const char* op = "fastlm::ngram_query";
  const size_t N = keys.size();
  TORCH_CHECK(N >= 1 && log_prob.size() == N && log_backoff.size() == N && slots.size() == N, op,
              ": one keys/log_prob/log_backoff/slots per order");
  TORCH_CHECK(tokens_in.dim() == 2, op, ": tokens must be (rows, width)");
  const at::Tensor tokens = tokens_in.to(at::kLong).contiguous();
  const at::Tensor lengths = lengths_in.to(at::kLong).contiguous();
  const int64_t rows = tokens.size(0), width = tokens.size(1);
  TORCH_CHECK(lengths.numel() == rows, op, ": one length per row");
  TORCH_CHECK(start >= 0 && start <= width, op, ": bad start");
  const int64_t* len = lengths.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) TORCH_CHECK(len[r] >= 0 && len[r] <= width, op, ": bad length");
  std::vector<ngram::TableView> views;
  for (size_t n = 0; n < N; ++n) {
    const at::Tensor& k = keys[n];
    TORCH_CHECK(k.dim() == 2 && k.size(1) == 2 && k.scalar_type() == at::kLong && k.is_contiguous(), op,
                ": keys must be contiguous int64 (m, 2)");
    TORCH_CHECK(log_prob[n].scalar_type() == at::kDouble && log_prob[n].is_contiguous() &&
                    log_prob[n].numel() == k.size(0) && log_backoff[n].scalar_type() == at::kDouble &&
                    log_backoff[n].is_contiguous() && log_backoff[n].numel() == k.size(0),
                op, ": log_prob/log_backoff must be contiguous float64 (m,)");
    const at::Tensor& index = slots[n];
    TORCH_CHECK(index.dim() == 1 && index.scalar_type() == at::kLong && index.is_contiguous() &&
                    index.numel() == ngram::hash_slot_count(k.size(0)),
                op, ": slots must be the ngram_hash_index of the keys");
    views.push_back({reinterpret_cast<const ngram::Key*>(k.data_ptr<int64_t>()), k.size(0),
                     log_prob[n].data_ptr<double>(), log_backoff[n].data_ptr<double>(), index.data_ptr<int64_t>(),
                     index.numel()});
  }
  at::Tensor out = at::zeros({rows, width - start}, at::kDouble);
  ngram::query(views, static_cast<int>(bits), unk_log_prob, tokens.data_ptr<int64_t>(), rows, width, len, start,
               out.data_ptr<double>(), width - start, torch_parallel_for());
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastlm, m) {
  m.def("ngram_estimate(Tensor stream, int order, int smoothing, int bits, int vocab_words, bool all_vocab, "
        "float add_k, float[] discounts, int[] prune, int block=4194304, int sort_chunk=131072) -> Tensor[]",
        &ngram_estimate);
  m.def("ngram_hash_index(Tensor keys) -> Tensor", &ngram_hash_index);
  m.def("ngram_query(Tensor[] keys, Tensor[] log_prob, Tensor[] log_backoff, Tensor[] slots, int bits, "
        "float unk_log_prob, Tensor tokens, Tensor lengths, int start) -> Tensor",
        &ngram_query);
}

}  // namespace fastlm::cpu
