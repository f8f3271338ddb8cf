// Torch glue for the HMM ops (schemas in fastlm/ops/schemas.py): a batch of sequences obs [B, Tmax]
// int64 (padded; row b has lengths[b] tokens), parameters as probabilities startprob [S],
// transmat [S, S], emissionprob [S, V], float32 or float64. Sequences run in parallel
// (at::parallel_for); the expected counts are accumulated per thread and reduced at the end.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "cpu/hmm_kernel.h"

namespace fastlm::cpu {
namespace {

struct Checked {
  at::Tensor obs, lengths, start, trans, emit_t;
  int64_t B, T, S, V;
};

// Shapes, dtypes and token ids (an id outside [0, V) would read out of bounds).
Checked check(const char* op, const at::Tensor& obs, const at::Tensor& lengths, const at::Tensor* start,
              const at::Tensor& trans, const at::Tensor& emit) {
  TORCH_CHECK(obs.dim() == 2 && obs.scalar_type() == at::kLong, op, ": obs must be int64 [batch, time], got ",
              obs.scalar_type(), " ", obs.sizes());
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == obs.size(0) && lengths.scalar_type() == at::kLong, op,
              ": lengths must be int64 [batch]");
  const auto dtype = trans.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op, ": parameters must be float32 or float64, got ", dtype);
  const int64_t S = trans.size(0);
  TORCH_CHECK(trans.dim() == 2 && trans.size(1) == S, op, ": transmat must be [S, S], got ", trans.sizes());
  TORCH_CHECK(emit.dim() == 2 && emit.size(0) == S && emit.scalar_type() == dtype, op,
              ": emissionprob must be [S, V] of the transmat dtype, got ", emit.sizes());
  if (start != nullptr)
    TORCH_CHECK(start->dim() == 1 && start->size(0) == S && start->scalar_type() == dtype, op,
                ": startprob must be [S] of the transmat dtype, got ", start->sizes());
  Checked c{obs.contiguous(), lengths.contiguous(), start ? start->contiguous() : at::Tensor(), trans.contiguous(),
            emit.t().contiguous(), obs.size(0), obs.size(1), S, emit.size(1)};
  const int64_t* o = c.obs.data_ptr<int64_t>();
  const int64_t* l = c.lengths.data_ptr<int64_t>();
  for (int64_t b = 0; b < c.B; ++b) {
    TORCH_CHECK(l[b] >= 0 && l[b] <= c.T, op, ": lengths[", b, "] = ", l[b], " is outside [0, ", c.T, "]");
    for (int64_t t = 0; t < l[b]; ++t)
      TORCH_CHECK(o[b * c.T + t] >= 0 && o[b * c.T + t] < c.V, op, ": token id ", o[b * c.T + t],
                  " at sequence ", b, " position ", t, " is outside [0, ", c.V, ")");
  }
  return c;
}

std::tuple<at::Tensor, at::Tensor> hmm_forward_scaled(const at::Tensor& obs, const at::Tensor& lengths,
                                                      const at::Tensor& startprob, const at::Tensor& transmat,
                                                      const at::Tensor& emissionprob, bool store_alpha) {
  const Checked c = check("fastlm::hmm_forward_scaled", obs, lengths, &startprob, transmat, emissionprob);
  const auto opts = transmat.options();
  at::Tensor log_c = at::zeros({c.B, c.T}, opts);
  at::Tensor alpha = store_alpha ? at::zeros({c.B, c.T, c.S}, opts) : at::empty({0}, opts);
  AT_DISPATCH_FLOATING_TYPES(transmat.scalar_type(), "fastlm_hmm_forward", [&] {
    const int64_t* o = c.obs.data_ptr<int64_t>();
    const int64_t* l = c.lengths.data_ptr<int64_t>();
    scalar_t* lc = log_c.data_ptr<scalar_t>();
    scalar_t* al = store_alpha ? alpha.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, c.B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> work(2 * c.S);
      for (int64_t b = b0; b < b1; ++b)
        hmm::forward_scaled_seq(o + b * c.T, l[b], c.start.data_ptr<scalar_t>(), c.trans.data_ptr<scalar_t>(),
                            c.emit_t.data_ptr<scalar_t>(), c.S, lc + b * c.T, al ? al + b * c.T * c.S : nullptr,
                            work.data());
    });
  });
  return {log_c, alpha};
}

at::Tensor hmm_backward_scaled(const at::Tensor& obs, const at::Tensor& lengths, const at::Tensor& transmat,
                               const at::Tensor& emissionprob, const at::Tensor& log_c_in) {
  const Checked c = check("fastlm::hmm_backward_scaled", obs, lengths, nullptr, transmat, emissionprob);
  TORCH_CHECK(log_c_in.sizes() == obs.sizes() && log_c_in.scalar_type() == transmat.scalar_type(),
              "fastlm::hmm_backward_scaled: log_c must be [batch, time] of the transmat dtype");
  const at::Tensor log_c = log_c_in.contiguous();
  at::Tensor beta = at::zeros({c.B, c.T, c.S}, transmat.options());
  AT_DISPATCH_FLOATING_TYPES(transmat.scalar_type(), "fastlm_hmm_backward", [&] {
    const int64_t* o = c.obs.data_ptr<int64_t>();
    const int64_t* l = c.lengths.data_ptr<int64_t>();
    at::parallel_for(0, c.B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> work(c.S);
      for (int64_t b = b0; b < b1; ++b)
        hmm::backward_scaled_seq(o + b * c.T, l[b], c.trans.data_ptr<scalar_t>(), c.emit_t.data_ptr<scalar_t>(),
                             log_c.data_ptr<scalar_t>() + b * c.T, c.S, beta.data_ptr<scalar_t>() + b * c.T * c.S,
                             work.data());
    });
  });
  return beta;
}

std::tuple<at::Tensor, at::Tensor> hmm_viterbi(const at::Tensor& obs, const at::Tensor& lengths,
                                               const at::Tensor& startprob, const at::Tensor& transmat,
                                               const at::Tensor& emissionprob) {
  const Checked c = check("fastlm::hmm_viterbi", obs, lengths, &startprob, transmat, emissionprob);
  const at::Tensor log_start = c.start.log(), log_trans = c.trans.log(), log_emit_t = c.emit_t.log();
  at::Tensor path = at::zeros({c.B, c.T}, obs.options().dtype(at::kLong));
  at::Tensor logprob = at::zeros({c.B}, transmat.options());
  AT_DISPATCH_FLOATING_TYPES(transmat.scalar_type(), "fastlm_hmm_viterbi", [&] {
    const int64_t* o = c.obs.data_ptr<int64_t>();
    const int64_t* l = c.lengths.data_ptr<int64_t>();
    at::parallel_for(0, c.B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> work(c.S), lattice(c.T * c.S);
      for (int64_t b = b0; b < b1; ++b)
        logprob.data_ptr<scalar_t>()[b] =
            hmm::viterbi_seq(o + b * c.T, l[b], log_start.data_ptr<scalar_t>(), log_trans.data_ptr<scalar_t>(),
                         log_emit_t.data_ptr<scalar_t>(), c.S, path.data_ptr<int64_t>() + b * c.T, lattice.data(),
                         work.data());
    });
  });
  return {path, logprob};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> hmm_expected_counts(const at::Tensor& obs,
                                                                                const at::Tensor& lengths,
                                                                                const at::Tensor& startprob,
                                                                                const at::Tensor& transmat,
                                                                                const at::Tensor& emissionprob) {
  const Checked c = check("fastlm::hmm_expected_counts", obs, lengths, &startprob, transmat, emissionprob);
  const auto opts = transmat.options();
  const int64_t threads = at::get_num_threads();
  // One accumulator per thread: [threads, S + S*S + V*S], summed after the parallel loop.
  const int64_t per_thread = c.S + c.S * c.S + c.V * c.S;
  at::Tensor acc = at::zeros({threads, per_thread}, opts);
  at::Tensor loglik = at::zeros({c.B}, opts);
  AT_DISPATCH_FLOATING_TYPES(transmat.scalar_type(), "fastlm_hmm_expected_counts", [&] {
    const int64_t* o = c.obs.data_ptr<int64_t>();
    const int64_t* l = c.lengths.data_ptr<int64_t>();
    at::parallel_for(0, c.B, 1, [&](int64_t b0, int64_t b1) {
      const int64_t tid = at::get_thread_num();
      scalar_t* mine = acc.data_ptr<scalar_t>() + tid * per_thread;
      std::vector<scalar_t> work(4 * c.S), log_c(c.T), alpha(c.T * c.S);
      for (int64_t b = b0; b < b1; ++b)
        loglik.data_ptr<scalar_t>()[b] = hmm::expected_counts_seq(
            o + b * c.T, l[b], c.start.data_ptr<scalar_t>(), c.trans.data_ptr<scalar_t>(),
            c.emit_t.data_ptr<scalar_t>(), c.S, log_c.data(), alpha.data(), work.data(), mine, mine + c.S,
            mine + c.S + c.S * c.S);
    });
  });
  const at::Tensor total = acc.sum(0);
  at::Tensor start_counts = total.slice(0, 0, c.S).clone();
  at::Tensor trans_counts = total.slice(0, c.S, c.S + c.S * c.S).view({c.S, c.S}) * c.trans;
  at::Tensor emit_counts = total.slice(0, c.S + c.S * c.S).view({c.V, c.S}).t().contiguous();
  return {loglik, start_counts, trans_counts, emit_counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlm, CPU, m) {
  m.impl("hmm_forward_scaled", &hmm_forward_scaled);
  m.impl("hmm_backward_scaled", &hmm_backward_scaled);
  m.impl("hmm_viterbi", &hmm_viterbi);
  m.impl("hmm_expected_counts", &hmm_expected_counts);
}

}  // namespace fastlm::cpu
