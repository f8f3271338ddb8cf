// Torch glue for the CUDA weight-only int8 GEMV (csrc/cuda/int8_gemv.cu): fastlm::int8_gemv, used by
// fastlm.ops.int8_weight_matmul for CUDA inputs with at most 8 rows (decoding).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/int8_gemv.h"

namespace fastlm::cuda {
namespace {

at::Tensor int8_gemv_op(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& w_scale,
                        const c10::optional<at::Tensor>& bias, int64_t group_size) {
  constexpr const char* op = "fastlm::int8_gemv";
  TORCH_CHECK(x_in.is_cuda() && w_in.is_cuda() && w_scale.is_cuda(), op, ": inputs must be CUDA tensors");
  TORCH_CHECK(x_in.dim() == 2 && w_in.dim() == 2 && x_in.size(1) == w_in.size(1), op,
              ": expected x (M, K) and w (N, K), got ", x_in.sizes(), " and ", w_in.sizes());
  TORCH_CHECK(w_in.scalar_type() == at::kChar, op, ": w must be int8, got ", w_in.scalar_type());
  const int64_t m = x_in.size(0), k = x_in.size(1), n = w_in.size(0);
  TORCH_CHECK(m >= 1 && m <= kInt8GemvMaxRows, op, ": x must have 1 to ", kInt8GemvMaxRows, " rows, got ", m);
  TORCH_CHECK(group_size > 0 && k % group_size == 0, op, ": group_size=", group_size, " must divide K=", k);
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.is_contiguous() && w_scale.numel() == n * (k / group_size),
              op, ": w_scale must be contiguous float32 (", n, ", ", k / group_size, ")");
  if (bias) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == n && bias->is_cuda(), op,
                ": bias must be a contiguous float32 CUDA tensor with ", n, " elements");
  }
  GemvType type;
  switch (x_in.scalar_type()) {
    case at::kFloat: type = GemvType::kFloat32; break;
    case at::kBFloat16: type = GemvType::kBFloat16; break;
    case at::kHalf: type = GemvType::kFloat16; break;
    default: TORCH_CHECK(false, op, ": x must be float32, bfloat16 or float16, got ", x_in.scalar_type());
  }
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w = w_in.contiguous();
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({m, n}, x.options());
  const cudaError_t err = int8_gemv(x.data_ptr(), k, type, w.data_ptr<int8_t>(), k, w_scale.data_ptr<float>(), group_size,
                                    bias ? bias->data_ptr<float>() : nullptr, out.data_ptr(), n, static_cast<int>(m), n, k,
                                    c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastlm, m) {
  // x (M <= 8, K) float @ (w (N, K) int8 * w_scale (N, K // group_size) fp32)^T + bias (N,) fp32, in x's dtype.
  m.def("int8_gemv(Tensor x, Tensor w, Tensor w_scale, Tensor? bias, int group_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastlm, CUDA, m) { m.impl("int8_gemv", &int8_gemv_op); }

}  // namespace fastlm::cuda
