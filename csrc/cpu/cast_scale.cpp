// Torch glue for fastlm::cast_scale_ (out = scale * x in out's dtype): checks, threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/cast_scale_kernels.h"

namespace fastlm::cpu {
namespace {

CastType cast_type(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return CastType::kFloat32;
    case at::kBFloat16: return CastType::kBFloat16;
    case at::kHalf: return CastType::kFloat16;
    default: TORCH_CHECK(false, "fastlm::cast_scale_: ", name, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
}

void cast_scale_(at::Tensor& out, const at::Tensor& x, double scale) {
  TORCH_CHECK(out.numel() == x.numel(), "fastlm::cast_scale_: out has ", out.numel(), " elements, x has ", x.numel());
  TORCH_CHECK(out.is_contiguous() && x.is_contiguous(), "fastlm::cast_scale_: out and x must be contiguous");
  TORCH_CHECK(out.device() == x.device(), "fastlm::cast_scale_: out and x are on different devices");
  const CastType st = cast_type(x, "x"), dt = cast_type(out, "out");
  const char* src = static_cast<const char*>(x.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  const int64_t ss = x.element_size(), ds = out.element_size();
  const float s = static_cast<float>(scale);
  at::parallel_for(0, x.numel(), 1 << 16, [&](int64_t i0, int64_t i1) {
    cast_scale(src + i0 * ss, st, dst + i0 * ds, dt, s, i1 - i0);
  });
}

}  // namespace

// Schema in fastlm/ops/schemas.py.

TORCH_LIBRARY_IMPL(fastlm, CPU, m) { m.impl("cast_scale_", &cast_scale_); }

}  // namespace fastlm::cpu
