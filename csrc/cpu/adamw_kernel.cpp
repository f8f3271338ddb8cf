// The AdamW element loop, written once (adamw_body) and compiled three times: for AVX-512, for
// AVX2+FMA (target attributes, chosen at run time) and for the baseline ISA ("scalar": no vector
// extensions beyond what every x86-64 has). Built with -fno-math-errno (CMakeLists.txt) so the
// square root vectorizes.
#include "cpu/adamw_kernel.h"

#include <cmath>
#include <cstring>
#include <initializer_list>

namespace fastlm::cpu {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTLM_ADAMW_X86 1
#define FASTLM_TARGET(isa) __attribute__((target(isa)))
#else
#define FASTLM_TARGET(isa)
#endif

__attribute__((always_inline)) inline float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

__attribute__((always_inline)) inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  const bool is_nan = (bits & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = bits + 0x7fffu + ((bits >> 16) & 1u);  // round to nearest even
  return is_nan ? static_cast<uint16_t>((bits >> 16) | 0x40u) : static_cast<uint16_t>(rounded >> 16);
}

template <bool kMaster, bool kGradBf16>
__attribute__((always_inline)) inline void adamw_body(const AdamwTensor& t, const AdamwConsts& c, int64_t i0,
                                                      int64_t i1) {
  float* __restrict w = kMaster ? t.master : static_cast<float*>(t.param);
  uint16_t* __restrict pb = static_cast<uint16_t*>(t.param);
  const float* __restrict gf = static_cast<const float*>(t.grad);
  const uint16_t* __restrict gb = static_cast<const uint16_t*>(t.grad);
  float* __restrict m = t.exp_avg;
  float* __restrict v = t.exp_avg_sq;
  const float decay = t.decay, neg_step = -t.step_size, bc2_sqrt = t.bc2_sqrt;
  const float w1 = c.one_minus_beta1, b2 = c.beta2, w2 = c.one_minus_beta2, eps = c.eps;
#pragma omp simd
  for (int64_t i = i0; i < i1; ++i) {
    const float g = kGradBf16 ? bf16_to_float(gb[i]) : gf[i];
    const float mi = m[i] + w1 * (g - m[i]);
    const float vi = v[i] * b2 + w2 * g * g;
    const float denom = std::sqrt(vi) / bc2_sqrt + eps;
    const float wi = w[i] * decay + neg_step * mi / denom;
    m[i] = mi;
    v[i] = vi;
    w[i] = wi;
    if (kMaster) pb[i] = float_to_bf16(wi);
  }
}

__attribute__((always_inline)) inline void adamw_any(const AdamwTensor& t, const AdamwConsts& c, int64_t i0,
                                                     int64_t i1) {
  if (t.master != nullptr) {
    if (t.grad_bf16) return adamw_body<true, true>(t, c, i0, i1);
    return adamw_body<true, false>(t, c, i0, i1);
  }
  if (t.grad_bf16) return adamw_body<false, true>(t, c, i0, i1);
  return adamw_body<false, false>(t, c, i0, i1);
}

#ifdef FASTLM_ADAMW_X86
FASTLM_TARGET("avx512f,avx512bw,avx512vl,avx512dq,fma,prefer-vector-width=512")
void adamw_avx512(const AdamwTensor& t, const AdamwConsts& c, int64_t i0, int64_t i1) { adamw_any(t, c, i0, i1); }

FASTLM_TARGET("avx2,fma")
void adamw_avx2(const AdamwTensor& t, const AdamwConsts& c, int64_t i0, int64_t i1) { adamw_any(t, c, i0, i1); }

#endif

// Baseline ISA of the build (x86-64: at most the SSE2 every such CPU has).
void adamw_scalar(const AdamwTensor& t, const AdamwConsts& c, int64_t i0, int64_t i1) { adamw_any(t, c, i0, i1); }

}  // namespace

const char* adamw_path_name(AdamwPath path) {
  switch (path) {
    case AdamwPath::kAvx512: return "avx512";
    case AdamwPath::kAvx2: return "avx2";
    default: return "scalar";
  }
}

bool adamw_path_from_name(const char* name, AdamwPath* path) {
  for (AdamwPath p : {AdamwPath::kAvx512, AdamwPath::kAvx2, AdamwPath::kScalar}) {
    if (std::strcmp(name, adamw_path_name(p)) == 0) {
      *path = p;
      return true;
    }
  }
  return false;
}

bool adamw_path_supported(AdamwPath path) {
#ifdef FASTLM_ADAMW_X86
  switch (path) {
    case AdamwPath::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    case AdamwPath::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default: return true;
  }
#else
  return path == AdamwPath::kScalar;
#endif
}

AdamwPath adamw_best_path() {
  for (AdamwPath p : {AdamwPath::kAvx512, AdamwPath::kAvx2}) {
    if (adamw_path_supported(p)) return p;
  }
  return AdamwPath::kScalar;
}

void adamw_update(AdamwPath path, const AdamwTensor& t, const AdamwConsts& c, int64_t i0, int64_t i1) {
#ifdef FASTLM_ADAMW_X86
  if (path == AdamwPath::kAvx512) return adamw_avx512(t, c, i0, i1);
  if (path == AdamwPath::kAvx2) return adamw_avx2(t, c, i0, i1);
#endif
  adamw_scalar(t, c, i0, i1);
}

}  // namespace fastlm::cpu
