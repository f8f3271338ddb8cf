// Activations with a branch-free exp so `#pragma omp simd` vectorizes them (libm's erff/tanhf
// would run one element at a time, as slow as the GEMM itself for wide layers).
//   gelu(x)      = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))      (erf: Abramowitz-Stegun 7.1.26, |err| < 1.5e-7)
//   gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x * sigmoid(2u),   u = sqrt(2/pi) (x + 0.044715 x^3)
//   silu(x)      = x * sigmoid(x)
#include "cpu/matmul_kernels.h"

// GCC if-converts the selects below (clamps, sign choices) into vector blends only when float
// compares may be assumed not to trap (torch builds with the same flag). Values are unchanged.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include <cmath>
#include <cstring>

#include "cpu/cast_scale_kernels.h"
#include "cpu/vectorize.h"

namespace fastlm::cpu {
namespace {

constexpr float kSqrt2Pi = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluTanhC = 0.044715f;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;  // 1 / sqrt(2 pi)

// e^x, Cephes expf (relative error ~1e-7); x is clamped to [-87, 88] so 2^n stays a normal float.
// No libm calls (std::floor, fminf): they keep the loops from vectorizing.
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23)
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) * (1 << 23);
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return e * scale;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

// Phi(x) = 0.5 (1 + erf(x / sqrt 2)), via erfc on |x| so there is no cancellation for x < 0.
inline float normal_cdf(float x) {
  const float z = (x < 0.0f ? -x : x) * kInvSqrt2;
  const float t = 1.0f / (1.0f + 0.3275911f * z);
  const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  const float half_erfc = 0.5f * poly * exp_approx(-z * z);
  return x >= 0.0f ? 1.0f - half_erfc : half_erfc;
}

inline float gelu_tanh_arg(float x) { return 2.0f * kSqrt2Pi * (x + kGeluTanhC * x * x * x); }

FASTLM_MULTIVERSION void gelu_rows(float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] * normal_cdf(x[i]);
}
FASTLM_MULTIVERSION void gelu_tanh_rows(float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] * sigmoid(gelu_tanh_arg(x[i]));
}
FASTLM_MULTIVERSION void silu_rows(float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] * sigmoid(x[i]);
}

FASTLM_MULTIVERSION void gelu_bwd(float* g, const float* pre, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float x = pre[i];
    const float pdf = kInvSqrt2Pi * exp_approx(-0.5f * x * x);
    g[i] *= normal_cdf(x) + x * pdf;
  }
}
FASTLM_MULTIVERSION void gelu_tanh_bwd(float* g, const float* pre, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float x = pre[i];
    const float s = sigmoid(gelu_tanh_arg(x));
    const float du = 2.0f * kSqrt2Pi * (1.0f + 3.0f * kGeluTanhC * x * x);  // d(2u)/dx
    g[i] *= s + x * s * (1.0f - s) * du;
  }
}
FASTLM_MULTIVERSION void silu_bwd(float* g, const float* pre, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float x = pre[i];
    const float s = sigmoid(x);
    g[i] *= s * (1.0f + x * (1.0f - s));
  }
}

// Four rows of a against one fp32 row w: four independent accumulators hide the FMA latency.
FASTLM_MULTIVERSION void dot4(const float* a0, const float* a1, const float* a2, const float* a3, const float* w,
                              int64_t K, float* s) {
  float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t k = 0; k < K; ++k) {
    const float x = w[k];
    s0 += a0[k] * x;
    s1 += a1[k] * x;
    s2 += a2[k] * x;
    s3 += a3[k] * x;
  }
  s[0] = s0, s[1] = s1, s[2] = s2, s[3] = s3;
}

FASTLM_MULTIVERSION float dot1(const float* a, const float* w, int64_t K) {
  float s0 = 0.0f;
#pragma omp simd reduction(+ : s0)
  for (int64_t k = 0; k < K; ++k) s0 += a[k] * w[k];
  return s0;
}

}  // namespace

void small_m_gemm(const float* a, int64_t M, int64_t K, const void* w, int w_type, int64_t ldw, int64_t n, float* out,
                  int64_t ldo, float* buf) {
  const CastType wt = static_cast<CastType>(w_type);
  const int64_t es = wt == CastType::kFloat32 ? 4 : 2;
  for (int64_t j = 0; j < n; ++j) {
    cast_scale(static_cast<const char*>(w) + j * ldw * es, wt, buf, CastType::kFloat32, 1.0f, K);
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) {
      float s[4];
      dot4(a + m * K, a + (m + 1) * K, a + (m + 2) * K, a + (m + 3) * K, buf, K, s);
      for (int i = 0; i < 4; ++i) out[(m + i) * ldo + j] = s[i];
    }
    for (; m < M; ++m) out[m * ldo + j] = dot1(a + m * K, buf, K);
  }
}

FASTLM_MULTIVERSION void add_bias(float* x, const float* bias, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] += bias[i];
}

void apply_activation(float* x, Activation act, int64_t n) {
  switch (act) {
    case Activation::kNone: return;
    case Activation::kGelu: return gelu_rows(x, n);
    case Activation::kGeluTanh: return gelu_tanh_rows(x, n);
    case Activation::kSilu: return silu_rows(x, n);
  }
}

void activation_backward(float* grad, const float* pre, Activation act, int64_t n) {
  switch (act) {
    case Activation::kNone: return;
    case Activation::kGelu: return gelu_bwd(grad, pre, n);
    case Activation::kGeluTanh: return gelu_tanh_bwd(grad, pre, n);
    case Activation::kSilu: return silu_bwd(grad, pre, n);
  }
}

}  // namespace fastlm::cpu
