#include "cpu/rope_kernel.h"

#include "cpu/bf16_scalar.h"
#include "cpu/vectorize.h"

namespace fastlm::cpu {

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
