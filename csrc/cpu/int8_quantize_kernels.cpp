// Symmetric absmax int8 quantization of one fp32 row, group by group (vectorized, multiversioned).
#include <cfloat>

#include "cpu/int8_kernels.h"
#include "cpu/vectorize.h"

namespace fastlm::cpu {
namespace {

// Round half to even for |v| < 2^22 without a libm call, so the loop vectorizes. Exact: adding
// 1.5 * 2^23 leaves no fraction bits, and the default rounding mode is to nearest even.
inline float round_half_even(float v) {
  constexpr float magic = 12582912.0f;
  return (v + magic) - magic;
}

}  // namespace

FASTLM_MULTIVERSION void int8_quantize_row(const float* x, int64_t k, int64_t group_size, int8_t* q, float* scale) {
  for (int64_t g0 = 0, g = 0; g0 < k; g0 += group_size, ++g) {
    const float* xg = x + g0;
    int8_t* qg = q + g0;
    float absmax = 0.f;
#pragma omp simd reduction(max : absmax)
    for (int64_t i = 0; i < group_size; ++i) absmax = absmax > __builtin_fabsf(xg[i]) ? absmax : __builtin_fabsf(xg[i]);
    float s = absmax / 127.f;
    s = absmax > 0.f ? (s < FLT_MIN ? FLT_MIN : s) : 1.f;
    scale[g] = s;
    // x / s, not x * (1 / s): the same IEEE division as the reference, so the results are identical.
#pragma omp simd
    for (int64_t i = 0; i < group_size; ++i) {
      float v = round_half_even(xg[i] / s);
      v = v > 127.f ? 127.f : (v < -127.f ? -127.f : v);
      qg[i] = static_cast<int8_t>(static_cast<int32_t>(v));
    }
  }
}

FASTLM_MULTIVERSION void int8_dequantize_row(const int8_t* q, int64_t k, int64_t group_size, const float* scale,
                                             float* out) {
  for (int64_t g0 = 0, g = 0; g0 < k; g0 += group_size, ++g) {
    const float s = scale[g];
#pragma omp simd
    for (int64_t i = 0; i < group_size; ++i) out[g0 + i] = static_cast<float>(q[g0 + i]) * s;
  }
}

}  // namespace fastlm::cpu
