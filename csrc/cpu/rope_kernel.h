// Rotary position embedding of head vectors (torch-free).
#pragma once
#include <cstdint>

namespace fastlm::cpu {

// For each of the `heads` head vectors of one token, x = [x1 | x2] (halves of `half` values), all at
// one angle (cos/sin of `half` values): out = [x1 c - x2 s | x2 c + x1 s], with s negated when sign < 0
// (the inverse rotation, which is the backward); head h at x + h * x_head_stride / out + h *
// out_head_stride; out may not alias x. bf16 is converted in registers (fp32 math, one
// round-to-nearest-even): one call per token.
void rope_heads(const float* x, int64_t x_head_stride, float* out, int64_t out_head_stride, int64_t heads,
                const float* cos, const float* sin, float sign, int64_t half);
void rope_heads(const uint16_t* x, int64_t x_head_stride, uint16_t* out, int64_t out_head_stride, int64_t heads,
                const float* cos, const float* sin, float sign, int64_t half);

}  // namespace fastlm::cpu
