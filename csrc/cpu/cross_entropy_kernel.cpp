#include "cpu/cross_entropy_kernel.h"

#include <cmath>
#include <limits>

#include "cpu/bf16_scalar.h"
#include "cpu/fast_math.h"
#include "cpu/vectorize.h"

namespace fastlm::cpu {

FASTLM_MULTIVERSION float cross_entropy_row_fwd(const float* x, int64_t v, int64_t label, float smoothing,
                                                float z_loss, float* lse_out) {
  float m = -std::numeric_limits<float>::infinity();
  float total = 0.f;
#pragma omp simd reduction(max : m) reduction(+ : total)
  for (int64_t i = 0; i < v; ++i) {
    m = x[i] > m ? x[i] : m;
    total += x[i];
  }
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < v; ++i) s += fast_exp(x[i] - m);
  const float lse = m + std::log(s);
  *lse_out = lse;
  return lse - (1.f - smoothing) * x[label] - smoothing * (total / static_cast<float>(v)) + z_loss * lse * lse;
}

FASTLM_MULTIVERSION void cross_entropy_row_bwd(const float* x, int64_t v, int64_t label, float lse, float g,
                                               float smoothing, float z_loss, float* dx) {
  const float scale = g * (1.f + 2.f * z_loss * lse);
  const float shift = g * smoothing / static_cast<float>(v);
#pragma omp simd
  for (int64_t i = 0; i < v; ++i) dx[i] = scale * fast_exp(x[i] - lse) - shift;
  dx[label] -= g * (1.f - smoothing);
}

FASTLM_MULTIVERSION void cross_entropy_row_bwd(const uint16_t* x, int64_t v, int64_t label, float lse, float g,
                                               float smoothing, float z_loss, uint16_t* dx) {
  const float scale = g * (1.f + 2.f * z_loss * lse);
  const float shift = g * smoothing / static_cast<float>(v);
#pragma omp simd
  for (int64_t i = 0; i < v; ++i) dx[i] = bf16_round(scale * fast_exp(bf16_value(x[i]) - lse) - shift);
  // the label's term in fp32 before its one rounding, as the fp32-row kernel does
  dx[label] = bf16_round(scale * fast_exp(bf16_value(x[label]) - lse) - shift - g * (1.f - smoothing));
}

}  // namespace fastlm::cpu
