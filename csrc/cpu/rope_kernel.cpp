#include "cpu/rope_kernel.h"

#include "cpu/bf16_scalar.h"
#include "cpu/vectorize.h"

namespace fastlm::cpu {

namespace {

template <typename T>
__attribute__((always_inline)) inline void heads(const T* x, int64_t x_head_stride, T* out, int64_t out_head_stride,
                                                 int64_t n_heads, const float* cos, const float* sin, float sign,
                                                 int64_t half) {
  for (int64_t h = 0; h < n_heads; ++h) {
    const T* x1 = x + h * x_head_stride;
    const T* x2 = x1 + half;
    T* o1 = out + h * out_head_stride;
    T* o2 = o1 + half;
#pragma omp simd
    for (int64_t i = 0; i < half; ++i) {
      const float c = cos[i], s = sign * sin[i];
      const float a = value(x1[i]), b = value(x2[i]);
      put(o1 + i, a * c - b * s);
      put(o2 + i, b * c + a * s);
    }
  }
}

}  // namespace

FASTLM_MULTIVERSION void rope_heads(const float* x, int64_t x_head_stride, float* out, int64_t out_head_stride,
                                    int64_t n_heads, const float* cos, const float* sin, float sign, int64_t half) {
  heads(x, x_head_stride, out, out_head_stride, n_heads, cos, sin, sign, half);
}

FASTLM_MULTIVERSION void rope_heads(const uint16_t* x, int64_t x_head_stride, uint16_t* out, int64_t out_head_stride,
                                    int64_t n_heads, const float* cos, const float* sin, float sign, int64_t half) {
  heads(x, x_head_stride, out, out_head_stride, n_heads, cos, sin, sign, half);
}

}  // namespace fastlm::cpu
