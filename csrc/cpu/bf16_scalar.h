// One bf16 value to / from fp32 in registers (torch-free): inside `#pragma omp simd` loops these
// vectorize, so a kernel reads and writes bf16 tensors directly instead of converting whole rows
// through fp32 buffers (rows::load / rows::store) in extra passes.
#pragma once
#include <cstdint>
#include <cstring>

namespace fastlm::cpu {

inline float bf16_value(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Round to nearest even; NaN stays NaN (as float_to_bf16 in norm_rows.cpp).
inline uint16_t bf16_round(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  const bool is_nan = (bits & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = bits + 0x7fffu + ((bits >> 16) & 1u);
  return is_nan ? static_cast<uint16_t>((bits >> 16) | 0x40u) : static_cast<uint16_t>(rounded >> 16);
}

}  // namespace fastlm::cpu
