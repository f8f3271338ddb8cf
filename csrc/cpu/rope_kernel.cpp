#include "cpu/rope_kernel.h"

#include <cstring>

#include "cpu/vectorize.h"

namespace fastlm::cpu {
namespace {

inline float bf16_value(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline uint16_t bf16_round(float f) {  // round to nearest even; NaN stays NaN (as float_to_bf16)
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  const bool is_nan = (bits & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = bits + 0x7fffu + ((bits >> 16) & 1u);
  return is_nan ? static_cast<uint16_t>((bits >> 16) | 0x40u) : static_cast<uint16_t>(rounded >> 16);
}

}  // namespace

FASTLM_MULTIVERSION void rope_row(const float* x, const float* cos, const float* sin, float sign, int64_t half,
                                  float* out) {
  const float* x1 = x;
  const float* x2 = x + half;
  float* o1 = out;
  float* o2 = out + half;
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) {
    const float c = cos[i], s = sign * sin[i];
    o1[i] = x1[i] * c - x2[i] * s;
    o2[i] = x2[i] * c + x1[i] * s;
  }
}

FASTLM_MULTIVERSION void rope_heads(const float* x, int64_t x_head_stride, float* out, int64_t out_head_stride,
                                    int64_t heads, const float* cos, const float* sin, float sign, int64_t half) {
  for (int64_t h = 0; h < heads; ++h) {
    const float* x1 = x + h * x_head_stride;
    const float* x2 = x1 + half;
    float* o1 = out + h * out_head_stride;
    float* o2 = o1 + half;
#pragma omp simd
    for (int64_t i = 0; i < half; ++i) {
      const float c = cos[i], s = sign * sin[i];
      o1[i] = x1[i] * c - x2[i] * s;
      o2[i] = x2[i] * c + x1[i] * s;
    }
  }
}

FASTLM_MULTIVERSION void rope_heads(const uint16_t* x, int64_t x_head_stride, uint16_t* out, int64_t out_head_stride,
                                    int64_t heads, const float* cos, const float* sin, float sign, int64_t half) {
  for (int64_t h = 0; h < heads; ++h) {
    const uint16_t* x1 = x + h * x_head_stride;
    const uint16_t* x2 = x1 + half;
    uint16_t* o1 = out + h * out_head_stride;
    uint16_t* o2 = o1 + half;
#pragma omp simd
    for (int64_t i = 0; i < half; ++i) {
      const float c = cos[i], s = sign * sin[i];
      const float a = bf16_value(x1[i]), b = bf16_value(x2[i]);
      o1[i] = bf16_round(a * c - b * s);
      o2[i] = bf16_round(b * c + a * s);
    }
  }
}

}  // namespace fastlm::cpu
