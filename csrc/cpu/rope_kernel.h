// Rotary position embedding of one head vector, on fp32 buffers (torch-free).
#pragma once
#include <cstdint>

namespace fastlm::cpu {

// x = [x1 | x2] (halves of `half` values): out = [x1 c - x2 s | x2 c + x1 s], with s negated when
// sign < 0 (the inverse rotation, which is the backward). out may not alias x.
void rope_row(const float* x, const float* cos, const float* sin, float sign, int64_t half, float* out);

}  // namespace fastlm::cpu
