// y = (scale * x) converted to y's type, for fp32 / bf16 / fp16 arrays (torch-free).
// Used by data parallelism to write gradients into 16-bit communication buffers and back.
#pragma once
#include <cstdint>

namespace fastlm::cpu {

enum class CastType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// n elements from src (of src_type) to dst (of dst_type), each multiplied by scale in fp32.
// Rounding to 16 bits is to nearest even; NaN stays NaN, overflow becomes inf.
void cast_scale(const void* src, CastType src_type, void* dst, CastType dst_type, float scale, int64_t n);

}  // namespace fastlm::cpu
