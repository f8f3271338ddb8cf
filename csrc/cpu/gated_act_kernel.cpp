// One vectorized loop per activation (the activation is chosen once per row, not per element).
// The loops are templates on the element type: fp32 rows, or bf16 rows converted in registers
// (fp32 math, one rounding per output), so bf16 tensors need no conversion passes through buffers.
#include "cpu/gated_act_kernel.h"

#include "cpu/bf16_scalar.h"
#include "cpu/fast_math.h"
#include "cpu/vectorize.h"

namespace fastlm::cpu {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;
constexpr float kTanhCoef = 0.044715f;

inline float sigmoid_of(float x) { return 1.f / (1.f + fast_exp(-x)); }


template <typename T>
__attribute__((always_inline)) inline void fwd_row(const T* gate, const T* up, int act, int64_t n, T* out) {
  if (act == kSilu) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float x = value(gate[i]);
      put(out + i, x * sigmoid_of(x) * value(up[i]));
    }
  } else if (act == kGelu) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float x = value(gate[i]);
      put(out + i, 0.5f * x * (1.f + fast_erf(x * kInvSqrt2)) * value(up[i]));
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {  // 0.5 (1 + tanh(u)) = sigmoid(2u): no cancellation near -1
      const float x = value(gate[i]);
      put(out + i, x * sigmoid_of(2.f * kSqrt2OverPi * (x + kTanhCoef * x * x * x)) * value(up[i]));
    }
  }
}

template <typename T>
__attribute__((always_inline)) inline void bwd_row(const T* grad, const T* gate, const T* up, int act, int64_t n,
                                                   T* dgate, T* dup) {
  if (act == kSilu) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float x = value(gate[i]), g = value(grad[i]), e = fast_exp(-x);
      const float s = 1.f / (1.f + e), one_minus_s = e * s;  // 1 - s without cancellation
      put(dup + i, g * x * s);
      put(dgate + i, g * value(up[i]) * s * (1.f + x * one_minus_s));
    }
  } else if (act == kGelu) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float x = value(gate[i]), g = value(grad[i]);
      const float cdf = 0.5f * (1.f + fast_erf(x * kInvSqrt2));
      put(dup + i, g * x * cdf);
      put(dgate + i, g * value(up[i]) * (cdf + x * kInvSqrt2Pi * fast_exp(-0.5f * x * x)));
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {  // gelu_tanh(x) = x s, s = sigmoid(2u): d/dx = s + x s (1 - s) 2u'
      const float x = value(gate[i]), g = value(grad[i]);
      const float e = fast_exp(-2.f * kSqrt2OverPi * (x + kTanhCoef * x * x * x));
      const float s = 1.f / (1.f + e), one_minus_s = e * s;
      put(dup + i, g * x * s);
      put(dgate + i, g * value(up[i]) * (s + x * s * one_minus_s * 2.f * kSqrt2OverPi * (1.f + 3.f * kTanhCoef * x * x)));
    }
  }
}

}  // namespace

FASTLM_MULTIVERSION void gated_act_fwd_row(const float* gate, const float* up, int act, int64_t n, float* out) {
  fwd_row(gate, up, act, n, out);
}

FASTLM_MULTIVERSION void gated_act_fwd_row(const uint16_t* gate, const uint16_t* up, int act, int64_t n,
                                           uint16_t* out) {
  fwd_row(gate, up, act, n, out);
}

FASTLM_MULTIVERSION void gated_act_bwd_row(const float* grad, const float* gate, const float* up, int act, int64_t n,
                                           float* dgate, float* dup) {
  bwd_row(grad, gate, up, act, n, dgate, dup);
}

FASTLM_MULTIVERSION void gated_act_bwd_row(const uint16_t* grad, const uint16_t* gate, const uint16_t* up, int act,
                                           int64_t n, uint16_t* dgate, uint16_t* dup) {
  bwd_row(grad, gate, up, act, n, dgate, dup);
}

}  // namespace fastlm::cpu
