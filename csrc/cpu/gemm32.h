// fp32 GEMM on the faster of torch's BLAS (at::mm) and oneDNN (mkldnn::_linear_pointwise).
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace fastlm::cpu {

// x (M x K) @ y (K x N), fp32, any strides: a contiguous (M x N) result.
at::Tensor mm_f32(const at::Tensor& x, const at::Tensor& y);

// Whether mm_f32 runs oneDNN for a product with this many rows (else at::mm).
bool gemm32_onednn(int64_t rows);

// "onednn" or "torch": what mm_f32 runs for a GEMM of many rows in this process.
std::string gemm32_path();

}  // namespace fastlm::cpu
