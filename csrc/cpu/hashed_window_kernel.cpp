// Plain loops over contiguous windows: the compiler vectorizes them (no hand-written SIMD, so no
// runtime CPU dispatch is needed). A window [h, h + V) wraps around the B buckets at most once (V <= B).
#include "cpu/hashed_window_kernel.h"

#include <algorithm>

namespace fastlm::cpu {

template <typename T>
void hashed_window_sum_row(const T* theta, int64_t num_buckets, const int64_t* h, int64_t num_features,
                           int64_t vocab_size, T* out) {
  std::fill(out, out + vocab_size, T(0));
  for (int64_t f = 0; f < num_features; ++f) {
    const int64_t start = h[f];
    if (start < 0) continue;  // an absent feature (e.g. history before the document start)
    const int64_t first = std::min(vocab_size, num_buckets - start);  // up to the end of theta
    const T* w = theta + start;
    for (int64_t v = 0; v < first; ++v) out[v] += w[v];
    T* tail = out + first;  // the wrapped part starts again at bucket 0
    for (int64_t v = 0; v < vocab_size - first; ++v) tail[v] += theta[v];
  }
}

template <typename T>
void hashed_window_sum_grad_range(const T* grad_out, const int64_t* h, int64_t rows, int64_t num_features,
                                  int64_t vocab_size, int64_t num_buckets, int64_t b0, int64_t b1,
                                  T* grad_theta) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* g = grad_out + r * vocab_size;
    for (int64_t f = 0; f < num_features; ++f) {
      const int64_t start = h[r * num_features + f];
      if (start < 0) continue;
      const int64_t first = std::min(vocab_size, num_buckets - start);
      // Buckets [start, start + first) take g[0, first); buckets [0, V - first) take g[first, V).
      int64_t lo = std::max(start, b0), hi = std::min(start + first, b1);
      for (int64_t i = lo; i < hi; ++i) grad_theta[i] += g[i - start];
      lo = b0;
      hi = std::min(vocab_size - first, b1);
      const T* wrapped = g + first;
      for (int64_t i = lo; i < hi; ++i) grad_theta[i] += wrapped[i];
    }
  }
}

// fp32 for training; fp64 for the tests' gradcheck of the registered op.
template void hashed_window_sum_row<float>(const float*, int64_t, const int64_t*, int64_t, int64_t, float*);
template void hashed_window_sum_row<double>(const double*, int64_t, const int64_t*, int64_t, int64_t, double*);
template void hashed_window_sum_grad_range<float>(const float*, const int64_t*, int64_t, int64_t, int64_t, int64_t,
                                                  int64_t, int64_t, float*);
template void hashed_window_sum_grad_range<double>(const double*, const int64_t*, int64_t, int64_t, int64_t, int64_t,
                                                   int64_t, int64_t, double*);

}  // namespace fastlm::cpu
