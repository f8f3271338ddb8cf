#include "cpu/norm_rows.h"

#include <cmath>
#include <cstring>

#include "cpu/vectorize.h"

namespace fastlm::cpu {
namespace {

// Row sums with many independent accumulators: a single vector accumulator would make every add
// wait for the previous one (latency-bound); 64 lanes = 4 AVX-512 or 8 AVX2 registers in flight.
constexpr int64_t kLanes = 64;

template <typename Term>
__attribute__((always_inline)) inline float row_sum(int64_t n, Term term) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) acc[j] += term(i + j);
  }
  float total = 0.f;
#pragma omp simd reduction(+ : total)
  for (int64_t r = i; r < n; ++r) total += term(r);  // the tail, still vectorized
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < kLanes; ++j) total += acc[j];
  return total;
}

// Two sums in one pass over the row (the backward needs both).
template <typename TermA, typename TermB>
__attribute__((always_inline)) inline void row_sum2(int64_t n, TermA term_a, TermB term_b, float* sum_a, float* sum_b) {
  float acc_a[kLanes] = {}, acc_b[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) {
      acc_a[j] += term_a(i + j);
      acc_b[j] += term_b(i + j);
    }
  }
  float a = 0.f, b = 0.f;
#pragma omp simd reduction(+ : a, b)
  for (int64_t r = i; r < n; ++r) {  // the tail, still vectorized
    a += term_a(r);
    b += term_b(r);
  }
#pragma omp simd reduction(+ : a, b)
  for (int64_t j = 0; j < kLanes; ++j) {
    a += acc_a[j];
    b += acc_b[j];
  }
  *sum_a = a;
  *sum_b = b;
}

}  // namespace

FASTLM_MULTIVERSION void bf16_to_float(const uint16_t* src, float* dst, int64_t n) {
  uint32_t* out = reinterpret_cast<uint32_t*>(dst);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<uint32_t>(src[i]) << 16;
}

FASTLM_MULTIVERSION void float_to_bf16(const float* src, uint16_t* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &src[i], sizeof(bits));
    const bool is_nan = (bits & 0x7fffffffu) > 0x7f800000u;
    const uint32_t rounded = bits + 0x7fffu + ((bits >> 16) & 1u);  // round to nearest even
    dst[i] = is_nan ? static_cast<uint16_t>((bits >> 16) | 0x40u) : static_cast<uint16_t>(rounded >> 16);
  }
}

FASTLM_MULTIVERSION float rms_norm_row_fwd(const float* x, const float* w, float eps, int64_t n, float* y) {
  const float sum_sq = row_sum(n, [&](int64_t i) { return x[i] * x[i]; });
  const float rstd = 1.f / std::sqrt(sum_sq / static_cast<float>(n) + eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * rstd * w[i];
  return rstd;
}

FASTLM_MULTIVERSION void rms_norm_row_bwd(const float* g, const float* x, const float* w, float rstd, int64_t n,
                                          float* dx, float* dw_acc) {
  const float dot = row_sum(n, [&](int64_t i) { return g[i] * w[i] * x[i]; });  // sum(g*w*xhat) / rstd
  const float c = dot * rstd / static_cast<float>(n);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float xhat = x[i] * rstd;
    dw_acc[i] += g[i] * xhat;
    dx[i] = rstd * (g[i] * w[i] - xhat * c);
  }
}

FASTLM_MULTIVERSION void layer_norm_row_fwd(const float* x, const float* w, const float* b, float eps, int64_t n,
                                            float* y, float* mean_out, float* rstd_out) {
  // One pass for mean and variance, on data shifted by the row's first value ("shifted data"
  // variance): the shift removes the cancellation of E[x^2] - mean^2 when |mean| >> std. If the
  // first value is far from the mean (an outlier), cancellation is still possible: detected, and
  // then the variance is recomputed around the mean in a second pass.
  const float shift = x[0];
  float sum_d, sum_d2;
  row_sum2(
      n, [&](int64_t i) { return x[i] - shift; }, [&](int64_t i) { return (x[i] - shift) * (x[i] - shift); }, &sum_d,
      &sum_d2);
  const float mean_d = sum_d / static_cast<float>(n);
  const float mean = shift + mean_d;
  float sum_sq = sum_d2 - sum_d * mean_d;  // sum of (x - mean)^2
  if (!(sum_sq > 1e-3f * sum_d2)) sum_sq = row_sum(n, [&](int64_t i) { return (x[i] - mean) * (x[i] - mean); });
  const float rstd = 1.f / std::sqrt(sum_sq / static_cast<float>(n) + eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
  *mean_out = mean;
  *rstd_out = rstd;
}

FASTLM_MULTIVERSION void layer_norm_row_bwd(const float* g, const float* x, const float* w, float mean, float rstd,
                                            int64_t n, float* dx, float* dw_acc, float* db_acc) {
  float sum_gw, sum_gw_xhat;
  row_sum2(
      n, [&](int64_t i) { return g[i] * w[i]; }, [&](int64_t i) { return g[i] * w[i] * (x[i] - mean) * rstd; },
      &sum_gw, &sum_gw_xhat);
  const float c1 = sum_gw_xhat / static_cast<float>(n);
  const float c2 = sum_gw / static_cast<float>(n);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float xhat = (x[i] - mean) * rstd;
    dw_acc[i] += g[i] * xhat;
    db_acc[i] += g[i];
    dx[i] = rstd * (g[i] * w[i] - xhat * c1 - c2);
  }
}

FASTLM_MULTIVERSION void add_into(const float* src, float* acc, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) acc[i] += src[i];
}

}  // namespace fastlm::cpu
