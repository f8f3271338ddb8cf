#include "cpu/norm_rows.h"

#include <cmath>
#include <cstring>

#include "cpu/vectorize.h"

namespace fastlm::cpu {

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
  float sum_sq = 0.f;
#pragma omp simd reduction(+ : sum_sq)
  for (int64_t i = 0; i < n; ++i) sum_sq += x[i] * x[i];
  const float rstd = 1.f / std::sqrt(sum_sq / static_cast<float>(n) + eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * rstd * w[i];
  return rstd;
}

FASTLM_MULTIVERSION void rms_norm_row_bwd(const float* g, const float* x, const float* w, float rstd, int64_t n,
                                          float* dx, float* dw_acc) {
  float dot = 0.f;  // sum(g * w * xhat)
#pragma omp simd reduction(+ : dot)
  for (int64_t i = 0; i < n; ++i) dot += g[i] * w[i] * x[i];
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
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  const float mean = sum / static_cast<float>(n);
  float sum_sq = 0.f;  // two passes: no cancellation when |mean| >> std
#pragma omp simd reduction(+ : sum_sq)
  for (int64_t i = 0; i < n; ++i) sum_sq += (x[i] - mean) * (x[i] - mean);
  const float rstd = 1.f / std::sqrt(sum_sq / static_cast<float>(n) + eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
  *mean_out = mean;
  *rstd_out = rstd;
}

FASTLM_MULTIVERSION void layer_norm_row_bwd(const float* g, const float* x, const float* w, float mean, float rstd,
                                            int64_t n, float* dx, float* dw_acc, float* db_acc) {
  float sum_gw = 0.f, sum_gw_xhat = 0.f;
#pragma omp simd reduction(+ : sum_gw, sum_gw_xhat)
  for (int64_t i = 0; i < n; ++i) {
    const float gw = g[i] * w[i];
    sum_gw += gw;
    sum_gw_xhat += gw * (x[i] - mean) * rstd;
  }
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
