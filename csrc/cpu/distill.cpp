// Torch glue for fastlm::distill_loss (one chunk of distillation rows; schema in fastlm/ops/schemas.py).
// student_logits (n, V) fp32/bf16/fp16; teacher logits (n, V) any float dtype, or with teacher_index
// (n, k) the teacher's log-probabilities (n, k + 1). Per-row loss fp32; grad_logits in the logits' dtype.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "cpu/distill_kernel.h"
#include "cpu/float_rows.h"

namespace fastlm::cpu {
namespace {

constexpr const char* kOp = "fastlm::distill_loss";

std::tuple<at::Tensor, at::Tensor> distill_loss(const at::Tensor& logits_in, const at::Tensor& teacher_in,
                                                const std::optional<at::Tensor>& index_in, const at::Tensor& row_grad,
                                                int64_t loss, double beta, double temperature, bool compute_grad) {
  rows::check_float_dtype(logits_in, kOp, "student_logits");
  TORCH_CHECK(logits_in.dim() == 2 && logits_in.size(1) > 0, kOp, ": student_logits must be (rows, vocab), got ",
              logits_in.sizes());
  TORCH_CHECK(loss >= 0 && loss <= 2, kOp, ": loss must be 0 (kl), 1 (reverse_kl) or 2 (jsd), got ", loss);
  TORCH_CHECK(temperature > 0, kOp, ": temperature must be > 0, got ", temperature);
  TORCH_CHECK(beta >= 0 && beta <= 1, kOp, ": beta must be in [0, 1], got ", beta);
  int code = static_cast<int>(loss);
  if (code == 2 && beta == 0.0) code = 0;  // generalized JSD's ends are the two KLs (TRL's convention)
  if (code == 2 && beta == 1.0) code = 1;
  const at::Tensor logits = logits_in.stride(1) == 1 ? logits_in : logits_in.contiguous();
  const int64_t n = logits.size(0), v = logits.size(1);
  const bool topk = index_in.has_value();
  at::Tensor index, teacher;
  int64_t k = 0;
  if (topk) {
    index = index_in->to(at::kLong).contiguous();
    TORCH_CHECK(index.dim() == 2 && index.size(0) == n && index.size(1) >= 1 && index.size(1) < v, kOp,
                ": teacher_index must be (", n, ", k) with 1 <= k < ", v, ", got ", index.sizes());
    k = index.size(1);
    teacher = teacher_in.to(at::kFloat).contiguous();
    TORCH_CHECK(teacher.dim() == 2 && teacher.size(0) == n && teacher.size(1) == k + 1, kOp,
                ": with teacher_index the teacher must be log-probabilities (", n, ", ", k + 1, "), got ",
                teacher_in.sizes());
    const int64_t* ip = index.data_ptr<int64_t>();
    for (int64_t i = 0; i < n * k; ++i)
      TORCH_CHECK(ip[i] >= 0 && ip[i] < v, kOp, ": teacher_index ", ip[i], " is outside [0, ", v, ")");
  } else {
    TORCH_CHECK(teacher_in.dim() == 2 && teacher_in.size(0) == n && teacher_in.size(1) == v, kOp,
                ": teacher logits must be (", n, ", ", v, "), got ", teacher_in.sizes());
    // Same dtype as the student's logits, else one fp32 copy of the chunk.
    teacher = teacher_in.scalar_type() == logits.scalar_type() ? teacher_in : teacher_in.to(at::kFloat);
    if (teacher.stride(1) != 1) teacher = teacher.contiguous();
  }
  TORCH_CHECK(row_grad.numel() == n, kOp, ": row_grad must have ", n, " elements");
  const at::Tensor g = row_grad.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({n}, logits.options().dtype(at::kFloat));
  at::Tensor grad = compute_grad ? at::empty({n, v}, logits.options()) : at::empty({0}, logits.options());
  FASTLM_DISPATCH_FLOATS(logits.scalar_type(), "fastlm_distill_loss", [&] {
    const scalar_t* sp = logits.data_ptr<scalar_t>();
    const int64_t ss = logits.stride(0);
    const float* gp = g.data_ptr<float>();
    float* outp = out.data_ptr<float>();
    scalar_t* dp = compute_grad ? grad.data_ptr<scalar_t>() : nullptr;
    const float b = static_cast<float>(beta), temp = static_cast<float>(temperature);
    at::parallel_for(0, n, std::max<int64_t>(1, 16384 / v), [&](int64_t r0, int64_t r1) {
      std::vector<float> sbuf(v), tbuf(v), work(v), dbuf(v);
      for (int64_t i = r0; i < r1; ++i) {
        const float* s = rows::load(sp + i * ss, sbuf.data(), v);
        float* d = dp ? rows::out(dp + i * v, dbuf.data()) : nullptr;
        if (topk) {
          outp[i] = distill_row_topk(s, teacher.data_ptr<float>() + i * (k + 1), index.data_ptr<int64_t>() + i * k,
                                     v, k, code, b, temp, gp[i], d, work.data());
        } else {
          const float* t;
          if (teacher.scalar_type() == at::kFloat) {
            t = teacher.data_ptr<float>() + i * teacher.stride(0);
          } else {
            t = rows::load(teacher.data_ptr<scalar_t>() + i * teacher.stride(0), tbuf.data(), v);
          }
          outp[i] = distill_row_full(s, t, v, code, b, temp, gp[i], d, work.data());
        }
        if (dp) rows::store(d, dp + i * v, v);
      }
    });
  });
  return {out, grad};
}

}  // namespace

// Schema in fastlm/ops/schemas.py.
TORCH_LIBRARY_IMPL(fastlm, CPU, m) { m.impl("distill_loss", &distill_loss); }

}  // namespace fastlm::cpu
