// Hashed window sums (the "direct connections" of a hashed maximum-entropy language model),
// torch-free: fp32 (or fp64) buckets theta (B), int64 feature hashes (F per row), vocabulary V <= B.
//   forward:  out[v] = sum_f theta[(h[f] + v) mod B]           (h[f] < 0: no feature)
//   backward: grad_theta[(h[n, f] + v) mod B] += grad_out[n, v], for the buckets [b0, b1) only,
//             so callers can split the buckets between threads without races (deterministic).
#pragma once
#include <cstdint>

namespace fastlm::cpu {

// One output row: out (V) = the sum of the F windows of theta that h (F) names.
template <typename T>
void hashed_window_sum_row(const T* theta, int64_t num_buckets, const int64_t* h, int64_t num_features,
                           int64_t vocab_size, T* out);

// grad_theta[b0:b1) += the parts of every row's windows that fall in [b0, b1). grad_out (rows, V)
// contiguous, h (rows, F) contiguous. Each bucket sums its terms in row-then-feature order.
template <typename T>
void hashed_window_sum_grad_range(const T* grad_out, const int64_t* h, int64_t rows, int64_t num_features,
                                  int64_t vocab_size, int64_t num_buckets, int64_t b0, int64_t b1,
                                  T* grad_theta);

}  // namespace fastlm::cpu
