// One bf16 value to / from fp32 in registers (torch-free): inside `#pragma omp simd` loops these
// vectorize, so a kernel reads and writes bf16 tensors directly instead of converting whole rows
// through fp32 buffers (rows::load / rows::store) in extra passes.
#pragma once
#include <cstdint>
#include <cstring>

namespace fastlm::cpu {

inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline float bf16_value(uint16_t v) { return float_of(static_cast<uint32_t>(v) << 16); }

// Round to nearest even; NaN stays NaN (as float_to_bf16 in norm_rows.cpp).
inline uint16_t bf16_round(float f) {
  const uint32_t bits = bits_of(f);
  const bool is_nan = (bits & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = bits + 0x7fffu + ((bits >> 16) & 1u);
  return is_nan ? static_cast<uint16_t>((bits >> 16) | 0x40u) : static_cast<uint16_t>(rounded >> 16);
}

// For kernels templated on the element type (fp32 or bf16 as uint16_t): read as fp32, write rounded.
inline float value(float v) { return v; }
inline float value(uint16_t v) { return bf16_value(v); }
inline void put(float* dst, float v) { *dst = v; }
inline void put(uint16_t* dst, float v) { *dst = bf16_round(v); }

}  // namespace fastlm::cpu
