#include "cpu/rope_kernel.h"

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

}  // namespace fastlm::cpu
