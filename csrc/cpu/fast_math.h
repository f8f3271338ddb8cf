// Branch-free scalar exp / erf that GCC vectorizes inside `#pragma omp simd` loops
// (std::exp and std::erf do not vectorize without -ffast-math). Torch-free.
#pragma once
#include <cstdint>
#include <cstring>

namespace fastlm::cpu {

// exp(x), ~1-2 ulp on [-87, 88] (the argument is clamped to it: exp(-inf) gives ~1e-38, not 0):
// x = n ln2 + r, |r| <= ln2/2, exp(r) by the Cephes polynomial, 2^n through the exponent bits.
inline float fast_exp(float x) {
  x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  const float magic = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer in the low mantissa bits
  const float t = x * 1.44269504088896341f + magic;
  const float n = t - magic;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = (y * r + 1.f) * r + 1.f;
  int32_t bits;
  std::memcpy(&bits, &t, sizeof(bits));
  const int32_t e = ((bits - 0x4B400000) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return y * scale;
}

// erf(x), Abramowitz & Stegun 7.1.26: absolute error <= 1.5e-7.
inline float fast_erf(float x) {
  const float a = x < 0.f ? -x : x;
  const float t = 1.f / (1.f + 0.3275911f * a);
  const float poly = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t +
                      0.254829592f) * t;
  const float y = 1.f - poly * fast_exp(-a * a);
  return x < 0.f ? -y : y;
}

}  // namespace fastlm::cpu
