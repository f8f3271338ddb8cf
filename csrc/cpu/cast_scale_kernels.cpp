// Vectorizable scalar conversions (no branches the compiler cannot turn into selects); one
// multiversioned loop per (source, destination) pair, chosen in cast_scale().
#include "cpu/cast_scale_kernels.h"

#include <cstring>

#include "cpu/bf16_scalar.h"
#include "cpu/vectorize.h"

namespace fastlm::cpu {
namespace {

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i, CastType t) {
  const uint32_t h = p[i];
  if (t == CastType::kBFloat16) return bf16_value(p[i]);
  // fp16 -> fp32 (exact), after F. Giesen's half_to_float.
  const uint32_t shifted_exp = 0x7c00u << 13;
  uint32_t o = (h & 0x7fffu) << 13;
  const uint32_t exp = shifted_exp & o;
  o += (127u - 15u) << 23;
  const uint32_t inf_nan = o + ((128u - 16u) << 23);
  const uint32_t denorm = bits_of(float_of(o + (1u << 23)) - float_of(113u << 23));
  o = exp == shifted_exp ? inf_nan : (exp == 0 ? denorm : o);
  return float_of(o | ((h & 0x8000u) << 16));
}

inline uint16_t to_fp16(float f) {
  // fp32 -> fp16, round to nearest even, after F. Giesen's float_to_half_fast3_rtne.
  uint32_t x = bits_of(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  const uint32_t overflow = x > 0x7f800000u ? 0x7e00u : 0x7c00u;  // NaN stays NaN, the rest is inf
  const uint32_t denorm = bits_of(float_of(x) + float_of(0x3f000000u)) - 0x3f000000u;
  const uint32_t normal = (x + ((15u - 127u) << 23) + 0xfffu + ((x >> 13) & 1u)) >> 13;
  const uint32_t o = x >= (143u << 23) ? overflow : (x < (113u << 23) ? denorm : normal);
  return static_cast<uint16_t>(o | sign);
}

FASTLM_MULTIVERSION void f32_f32(const float* s, float* d, float a, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) d[i] = s[i] * a;
}
FASTLM_MULTIVERSION void f32_bf16(const float* s, uint16_t* d, float a, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) d[i] = bf16_round(s[i] * a);
}
FASTLM_MULTIVERSION void f32_fp16(const float* s, uint16_t* d, float a, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) d[i] = to_fp16(s[i] * a);
}
FASTLM_MULTIVERSION void h_f32(const uint16_t* s, CastType t, float* d, float a, int64_t n) {
  if (t == CastType::kBFloat16) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) d[i] = load(s, i, CastType::kBFloat16) * a;
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) d[i] = load(s, i, CastType::kFloat16) * a;
  }
}
FASTLM_MULTIVERSION void h_h(const uint16_t* s, CastType st, uint16_t* d, CastType dt, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = load(s, i, st) * a;
    d[i] = dt == CastType::kBFloat16 ? bf16_round(v) : to_fp16(v);
  }
}

}  // namespace

void cast_scale(const void* src, CastType st, void* dst, CastType dt, float scale, int64_t n) {
  if (st == CastType::kFloat32) {
    const float* s = static_cast<const float*>(src);
    if (dt == CastType::kFloat32) return f32_f32(s, static_cast<float*>(dst), scale, n);
    if (dt == CastType::kBFloat16) return f32_bf16(s, static_cast<uint16_t*>(dst), scale, n);
    return f32_fp16(s, static_cast<uint16_t*>(dst), scale, n);
  }
  const uint16_t* s = static_cast<const uint16_t*>(src);
  if (dt == CastType::kFloat32) return h_f32(s, st, static_cast<float*>(dst), scale, n);
  return h_h(s, st, static_cast<uint16_t*>(dst), dt, scale, n);
}

}  // namespace fastlm::cpu
