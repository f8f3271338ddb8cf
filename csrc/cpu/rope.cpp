// Torch glue for fastlm::rope_fwd: x (B, T, H, D) with any strides but a unit last stride,
// cos/sin (T, D/2) or (B, T, D/2). The output has x's layout (empty_like), so a (B, H, T, D) tensor
// viewed as (B, T, H, D) (Hugging Face) comes back in HF's layout without a copy.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu/float_rows.h"
#include "cpu/rope_kernel.h"

namespace fastlm::cpu {
namespace {

at::Tensor rope_fwd(const at::Tensor& x_in, const at::Tensor& cos_in, const at::Tensor& sin_in, bool inverse) {
  constexpr const char* op = "fastlm::rope_fwd";
  TORCH_CHECK(x_in.dim() == 4, op, ": x must be (batch, seq, heads, head_dim), got ", x_in.sizes());
  rows::check_float_dtype(x_in, op, "x");
  const int64_t B = x_in.size(0), T = x_in.size(1), H = x_in.size(2), D = x_in.size(3);
  TORCH_CHECK(D % 2 == 0, op, ": head_dim must be even, got ", D);
  const int64_t half = D / 2;
  TORCH_CHECK(cos_in.sizes() == sin_in.sizes(), op, ": cos and sin shapes differ");
  TORCH_CHECK((cos_in.dim() == 2 && cos_in.size(0) == T && cos_in.size(1) == half) ||
                  (cos_in.dim() == 3 && cos_in.size(0) == B && cos_in.size(1) == T && cos_in.size(2) == half),
              op, ": cos/sin must be (seq, head_dim/2) or (batch, seq, head_dim/2), got ", cos_in.sizes());
  const at::Tensor x = x_in.stride(3) == 1 ? x_in : x_in.contiguous();
  const at::Tensor cos = cos_in.to(at::kFloat).contiguous();
  const at::Tensor sin = sin_in.to(at::kFloat).contiguous();
  const int64_t cos_batch_stride = cos.dim() == 3 ? T * half : 0;
  at::Tensor out = at::empty_like(x);
  if (out.stride(3) != 1) out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const float sign = inverse ? -1.f : 1.f;
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  if (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) {
    // One call per token: its H head vectors share the angle (the hot path: q/k of training).
    const bool bf16 = x.scalar_type() == at::kBFloat16;
    const int64_t es = x.element_size();
    const char* xp = static_cast<const char*>(x.data_ptr());
    char* op_ = static_cast<char*>(out.data_ptr());
    at::parallel_for(0, B * T, std::max<int64_t>(1, 4096 / (H * D)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / T, t = r % T;
        const char* xr = xp + (b * x.stride(0) + t * x.stride(1)) * es;
        char* orow = op_ + (b * out.stride(0) + t * out.stride(1)) * es;
        const int64_t angle = b * cos_batch_stride + t * half;
        if (bf16) {
          rope_heads(reinterpret_cast<const uint16_t*>(xr), x.stride(2), reinterpret_cast<uint16_t*>(orow),
                     out.stride(2), H, cp + angle, sp + angle, sign, half);
        } else {
          rope_heads(reinterpret_cast<const float*>(xr), x.stride(2), reinterpret_cast<float*>(orow), out.stride(2), H,
                     cp + angle, sp + angle, sign, half);
        }
      }
    });
    return out;
  }
  const int64_t rows = B * T * H;
  FASTLM_DISPATCH_FLOATS(x.scalar_type(), "fastlm_rope_fwd", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op_ = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / D), [&](int64_t r0, int64_t r1) {
      std::vector<float> xbuf(D), obuf(D);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / (T * H), t = (r / H) % T, h = r % H;
        const scalar_t* xr = xp + b * x.stride(0) + t * x.stride(1) + h * x.stride(2);
        scalar_t* orow = op_ + b * out.stride(0) + t * out.stride(1) + h * out.stride(2);
        const int64_t angle = b * cos_batch_stride + t * half;
        float* o = rows::out(orow, obuf.data());
        rope_heads(rows::load(xr, xbuf.data(), D), 0, o, 0, 1, cp + angle, sp + angle, sign, half);
        rows::store(o, orow, D);
      }
    });
  });
  return out;
}

}  // namespace

// Schema in fastlm/ops/schemas.py.

TORCH_LIBRARY_IMPL(fastlm, CPU, m) { m.impl("rope_fwd", &rope_fwd); }

}  // namespace fastlm::cpu
