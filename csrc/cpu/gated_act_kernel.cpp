// One vectorized loop per activation (the activation is chosen once per row, not per element).
#include "cpu/gated_act_kernel.h"

#include "cpu/fast_math.h"
#include "cpu/vectorize.h"

namespace fastlm::cpu {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;
constexpr float kTanhCoef = 0.044715f;

inline float sigmoid_of(float x) { return 1.f / (1.f + fast_exp(-x)); }

}  // namespace

FASTLM_MULTIVERSION void gated_act_fwd_row(const float* gate, const float* up, int act, int64_t n, float* out) {
  if (act == kSilu) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = gate[i] * sigmoid_of(gate[i]) * up[i];
  } else if (act == kGelu) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = 0.5f * gate[i] * (1.f + fast_erf(gate[i] * kInvSqrt2)) * up[i];
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {  // 0.5 (1 + tanh(u)) = sigmoid(2u): no cancellation near -1
      const float x = gate[i];
      out[i] = x * sigmoid_of(2.f * kSqrt2OverPi * (x + kTanhCoef * x * x * x)) * up[i];
    }
  }
}

FASTLM_MULTIVERSION void gated_act_bwd_row(const float* grad, const float* gate, const float* up, int act, int64_t n,
                                           float* dgate, float* dup) {
  if (act == kSilu) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float x = gate[i], e = fast_exp(-x);
      const float s = 1.f / (1.f + e), one_minus_s = e * s;  // 1 - s without cancellation
      dup[i] = grad[i] * x * s;
      dgate[i] = grad[i] * up[i] * s * (1.f + x * one_minus_s);
    }
  } else if (act == kGelu) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float x = gate[i];
      const float cdf = 0.5f * (1.f + fast_erf(x * kInvSqrt2));
      dup[i] = grad[i] * x * cdf;
      dgate[i] = grad[i] * up[i] * (cdf + x * kInvSqrt2Pi * fast_exp(-0.5f * x * x));
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {  // gelu_tanh(x) = x s, s = sigmoid(2u): d/dx = s + x s (1 - s) 2u'
      const float x = gate[i];
      const float e = fast_exp(-2.f * kSqrt2OverPi * (x + kTanhCoef * x * x * x));
      const float s = 1.f / (1.f + e), one_minus_s = e * s;
      dup[i] = grad[i] * x * s;
      dgate[i] = grad[i] * up[i] * (s + x * s * one_minus_s * 2.f * kSqrt2OverPi * (1.f + 3.f * kTanhCoef * x * x));
    }
  }
}

}  // namespace fastlm::cpu
