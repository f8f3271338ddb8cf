// Torch glue for fastlm::hashed_window_sum_fwd / _bwd (schemas in fastlm/ops/schemas.py).
// theta (B,) float, hashes (N, F) int64 in [-1, B) (-1: no feature), V <= B. fp32 math for fp32,
// bf16 and fp16 (read as fp32, the output rounded once; the gradient comes back fp32); fp64 stays
// fp64 (the tests' gradcheck of the registered op).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "cpu/hashed_window_kernel.h"

namespace fastlm::cpu {
namespace {

void check_hashes(const at::Tensor& hashes, int64_t num_buckets, int64_t vocab_size, const char* op) {
  TORCH_CHECK(hashes.dim() == 2, op, ": hashes must be (rows, features), got ", hashes.sizes());
  TORCH_CHECK(hashes.scalar_type() == at::kLong, op, ": hashes must be int64, got ", hashes.scalar_type());
  TORCH_CHECK(vocab_size >= 1 && vocab_size <= num_buckets, op, ": vocab_size ", vocab_size,
              " must be in [1, number of buckets ", num_buckets, "]");
  if (hashes.numel() > 0) {
    TORCH_CHECK(hashes.max().item<int64_t>() < num_buckets, op, ": a hash is >= the number of buckets ",
                num_buckets);
    TORCH_CHECK(hashes.min().item<int64_t>() >= -1, op, ": hashes must be >= -1 (-1: no feature)");
  }
}

// The dtype the kernel computes in: fp64 for fp64, else fp32.
at::ScalarType math_type(const at::Tensor& t, const char* op, const char* name) {
  const auto d = t.scalar_type();
  TORCH_CHECK(d == at::kFloat || d == at::kBFloat16 || d == at::kHalf || d == at::kDouble, op, ": ", name,
              " must be float64, float32, bfloat16 or float16, got ", d);
  return d == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor hashed_window_sum_fwd(const at::Tensor& theta_in, const at::Tensor& hashes_in, int64_t vocab_size) {
  constexpr const char* op = "fastlm::hashed_window_sum_fwd";
  TORCH_CHECK(theta_in.dim() == 1, op, ": theta must be 1-D (buckets), got ", theta_in.sizes());
  const at::Tensor theta = theta_in.to(math_type(theta_in, op, "theta")).contiguous();
  const int64_t B = theta.size(0);
  check_hashes(hashes_in, B, vocab_size, op);
  const at::Tensor hashes = hashes_in.contiguous();
  const int64_t N = hashes.size(0), F = hashes.size(1), V = vocab_size;
  at::Tensor out = at::empty({N, V}, theta.options());
  const int64_t* hp = hashes.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "fastlm_hashed_window_sum_fwd", [&] {
    const scalar_t* tp = theta.data_ptr<scalar_t>();
    scalar_t* outp = out.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, V * F));
    at::parallel_for(0, N, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) hashed_window_sum_row(tp, B, hp + r * F, F, V, outp + r * V);
    });
  });
  return out.scalar_type() == theta_in.scalar_type() ? out : out.to(theta_in.scalar_type());
}

at::Tensor hashed_window_sum_bwd(const at::Tensor& grad_in, const at::Tensor& hashes_in, int64_t num_buckets) {
  constexpr const char* op = "fastlm::hashed_window_sum_bwd";
  TORCH_CHECK(grad_in.dim() == 2, op, ": grad_out must be (rows, vocab), got ", grad_in.sizes());
  const at::Tensor grad = grad_in.to(math_type(grad_in, op, "grad_out")).contiguous();
  const int64_t V = grad.size(1);
  check_hashes(hashes_in, num_buckets, V, op);
  TORCH_CHECK(hashes_in.size(0) == grad.size(0), op, ": hashes has ", hashes_in.size(0),
              " rows but grad_out has ", grad.size(0));
  const at::Tensor hashes = hashes_in.contiguous();
  const int64_t N = hashes.size(0), F = hashes.size(1);
  at::Tensor grad_theta = at::zeros({num_buckets}, grad.options());
  const int64_t* hp = hashes.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "fastlm_hashed_window_sum_bwd", [&] {
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    scalar_t* out = grad_theta.data_ptr<scalar_t>();
    // Each thread owns a range of buckets and scans every window for its part: no two threads
    // write the same bucket, and each bucket adds its terms in the same order whatever the thread count.
    const int64_t grain = std::max<int64_t>(V, 1 << 16);
    at::parallel_for(0, num_buckets, grain, [&](int64_t b0, int64_t b1) {
      hashed_window_sum_grad_range(gp, hp, N, F, V, num_buckets, b0, b1, out);
    });
  });
  return grad_theta;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlm, CPU, m) {
  m.impl("hashed_window_sum_fwd", &hashed_window_sum_fwd);
  m.impl("hashed_window_sum_bwd", &hashed_window_sum_bwd);
}

}  // namespace fastlm::cpu
