// Weight-only int8 GEMV for decoding (torch-free): out (m, n) = x (m, k) @ (w (n, k) int8 * scale)^T + bias
// for m <= kInt8GemvMaxRows, x and out in fp32 / bf16 / fp16, scale (n, k / group_size) fp32, bias fp32.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace fastlm::cuda {

enum class GemvType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

constexpr int kInt8GemvMaxRows = 8;

// Leading dimensions are in elements. bias may be null. Returns the launch's error code.
cudaError_t int8_gemv(const void* x, int64_t ldx, GemvType type, const int8_t* w, int64_t ldw, const float* scale,
                      int64_t group_size, const float* bias, void* out, int64_t ldo, int m, int64_t n, int64_t k,
                      cudaStream_t stream);

}  // namespace fastlm::cuda
