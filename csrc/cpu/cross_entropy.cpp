// Torch glue for fastlm::cross_entropy_fwd / cross_entropy_bwd: logits (N, V) (fp32/bf16/fp16, unit
// last stride), labels (N,) integers. Per-row losses and lse in fp32; ignored rows get 0 / no grad.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu/cross_entropy_kernel.h"
#include "cpu/float_rows.h"

namespace fastlm::cpu {
namespace {

struct Rows {
  at::Tensor logits, labels;
};

Rows check(const at::Tensor& logits, const at::Tensor& labels, int64_t ignore_index, const char* op) {
  rows::check_float_dtype(logits, op, "logits");
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be (tokens, vocab), got ", logits.sizes());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == logits.size(0), op, ": labels must be (", logits.size(0),
              ",), got ", labels.sizes());
  TORCH_CHECK(!at::isFloatingType(labels.scalar_type()) && labels.scalar_type() != at::kBool, op,
              ": labels must be integers, got ", labels.scalar_type());
  TORCH_CHECK(logits.size(1) > 0, op, ": the vocabulary (last) dimension is empty");
  Rows r{logits.stride(1) == 1 ? logits : logits.contiguous(), labels.to(at::kLong).contiguous()};
  const int64_t v = logits.size(1);
  const int64_t* lp = r.labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < r.labels.numel(); ++i)
    TORCH_CHECK(lp[i] == ignore_index || (lp[i] >= 0 && lp[i] < v), op, ": label ", lp[i], " at row ", i,
                " is outside [0, ", v, ") and is not ignore_index (", ignore_index, ")");
  return r;
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_fwd(const at::Tensor& logits_in, const at::Tensor& labels_in,
                                                     int64_t ignore_index, double smoothing, double z_loss) {
  const Rows r = check(logits_in, labels_in, ignore_index, "fastlm::cross_entropy_fwd");
  const int64_t n = r.logits.size(0), v = r.logits.size(1);
  const auto f32 = r.logits.options().dtype(at::kFloat);
  at::Tensor loss = at::empty({n}, f32), lse = at::empty({n}, f32);
  FASTLM_DISPATCH_FLOATS(r.logits.scalar_type(), "fastlm_cross_entropy_fwd", [&] {
    const scalar_t* xp = r.logits.data_ptr<scalar_t>();
    const int64_t xs = r.logits.stride(0);
    const int64_t* lp = r.labels.data_ptr<int64_t>();
    float* lossp = loss.data_ptr<float>();
    float* lsep = lse.data_ptr<float>();
    at::parallel_for(0, n, std::max<int64_t>(1, 16384 / v), [&](int64_t r0, int64_t r1) {
      std::vector<float> buf(v);
      for (int64_t i = r0; i < r1; ++i) {
        const float* x = rows::load(xp + i * xs, buf.data(), v);
        const bool ignored = lp[i] == ignore_index;
        const float l = cross_entropy_row_fwd(x, v, ignored ? 0 : lp[i], static_cast<float>(smoothing),
                                              static_cast<float>(z_loss), lsep + i);
        lossp[i] = ignored ? 0.f : l;
      }
    });
  });
  return {loss, lse};
}

at::Tensor cross_entropy_bwd(const at::Tensor& grad_loss, const at::Tensor& logits_in, const at::Tensor& labels_in,
                             const at::Tensor& lse_in, int64_t ignore_index, double smoothing, double z_loss) {
  const Rows r = check(logits_in, labels_in, ignore_index, "fastlm::cross_entropy_bwd");
  const int64_t n = r.logits.size(0), v = r.logits.size(1);
  TORCH_CHECK(grad_loss.numel() == n && lse_in.numel() == n, "fastlm::cross_entropy_bwd: grad_loss and lse must have ",
              n, " elements");
  const at::Tensor g = grad_loss.to(at::kFloat).contiguous(), lse = lse_in.to(at::kFloat).contiguous();
  at::Tensor dx = at::empty({n, v}, r.logits.options());
  FASTLM_DISPATCH_FLOATS(r.logits.scalar_type(), "fastlm_cross_entropy_bwd", [&] {
    const scalar_t* xp = r.logits.data_ptr<scalar_t>();
    const int64_t xs = r.logits.stride(0);
    const int64_t* lp = r.labels.data_ptr<int64_t>();
    const float* gp = g.data_ptr<float>();
    const float* lsep = lse.data_ptr<float>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    at::parallel_for(0, n, std::max<int64_t>(1, 16384 / v), [&](int64_t r0, int64_t r1) {
      constexpr bool kBf16 = std::is_same_v<scalar_t, at::BFloat16>;
      std::vector<float> buf(kBf16 ? 0 : v), dbuf(kBf16 ? 0 : v);
      for (int64_t i = r0; i < r1; ++i) {
        if constexpr (kBf16) {  // read and written in registers: no conversion passes
          uint16_t* d = reinterpret_cast<uint16_t*>(dxp + i * v);
          if (lp[i] == ignore_index) {
            std::fill(d, d + v, uint16_t{0});
          } else {
            cross_entropy_row_bwd(reinterpret_cast<const uint16_t*>(xp + i * xs), v, lp[i], lsep[i], gp[i],
                                  static_cast<float>(smoothing), static_cast<float>(z_loss), d);
          }
          continue;
        }
        float* d = rows::out(dxp + i * v, dbuf.data());
        if (lp[i] == ignore_index) {
          std::fill(d, d + v, 0.f);
        } else {
          cross_entropy_row_bwd(rows::load(xp + i * xs, buf.data(), v), v, lp[i], lsep[i], gp[i],
                                static_cast<float>(smoothing), static_cast<float>(z_loss), d);
        }
        rows::store(d, dxp + i * v, v);
      }
    });
  });
  return dx;
}

}  // namespace

// Schemas in fastlm/ops/schemas.py.

TORCH_LIBRARY_IMPL(fastlm, CPU, m) {
  m.impl("cross_entropy_fwd", &cross_entropy_fwd);
  m.impl("cross_entropy_bwd", &cross_entropy_bwd);
}

}  // namespace fastlm::cpu
