// Torch glue for fastlm::gated_act_fwd / gated_act_bwd (SwiGLU, GeGLU): gate and up are (..., n)
// with a unit last stride and any row stride (e.g. the two halves of one [gate | up] projection).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "cpu/float_rows.h"
#include "cpu/gated_act_kernel.h"

namespace fastlm::cpu {
namespace {

// (..., n) -> (rows, n) with unit last stride, a view when possible.
at::Tensor as_rows(const at::Tensor& t, int64_t n) {
  at::Tensor r = t.reshape({-1, n});
  return r.stride(1) == 1 ? r : r.contiguous();
}

int64_t check(const at::Tensor& gate, const at::Tensor& up, int64_t act, const char* op) {
  rows::check_float_dtype(gate, op, "gate");
  TORCH_CHECK(gate.sizes() == up.sizes(), op, ": gate and up shapes differ: ", gate.sizes(), " vs ", up.sizes());
  TORCH_CHECK(gate.scalar_type() == up.scalar_type(), op, ": gate and up dtypes differ");
  TORCH_CHECK(gate.dim() >= 1, op, ": gate must have at least one dimension");
  TORCH_CHECK(act >= 0 && act <= 2, op, ": activation code must be 0 (silu), 1 (gelu) or 2 (gelu_tanh), got ", act);
  return gate.size(-1);
}

at::Tensor gated_act_fwd(const at::Tensor& gate_in, const at::Tensor& up_in, int64_t act) {
  const int64_t n = check(gate_in, up_in, act, "fastlm::gated_act_fwd");
  at::Tensor out = at::empty(gate_in.sizes(), gate_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const at::Tensor gate = as_rows(gate_in, n), up = as_rows(up_in, n);
  const int64_t nrows = gate.size(0);
  FASTLM_DISPATCH_FLOATS(gate.scalar_type(), "fastlm_gated_act_fwd", [&] {
    const scalar_t* gp = gate.data_ptr<scalar_t>();
    const scalar_t* up_ = up.data_ptr<scalar_t>();
    scalar_t* op_ = out.data_ptr<scalar_t>();
    const int64_t gs = gate.stride(0), us = up.stride(0);
    at::parallel_for(0, nrows, std::max<int64_t>(1, 8192 / n), [&](int64_t r0, int64_t r1) {
      if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {  // in registers: no conversion passes
        const auto* g16 = reinterpret_cast<const uint16_t*>(gp);
        const auto* u16 = reinterpret_cast<const uint16_t*>(up_);
        auto* o16 = reinterpret_cast<uint16_t*>(op_);
        for (int64_t r = r0; r < r1; ++r)
          gated_act_fwd_row(g16 + r * gs, u16 + r * us, static_cast<int>(act), n, o16 + r * n);
        return;
      }
      std::vector<float> gbuf(n), ubuf(n), obuf(n);
      for (int64_t r = r0; r < r1; ++r) {
        float* o = rows::out(op_ + r * n, obuf.data());
        gated_act_fwd_row(rows::load(gp + r * gs, gbuf.data(), n), rows::load(up_ + r * us, ubuf.data(), n),
                          static_cast<int>(act), n, o);
        rows::store(o, op_ + r * n, n);
      }
    });
  });
  return out;
}

// Writes dgate and dup as rows of their own row strides (n for separate tensors, 2n for one packed
// [dgate | dup] buffer).
void gated_act_bwd_into(const at::Tensor& grad_in, const at::Tensor& gate_in, const at::Tensor& up_in, int64_t act,
                        int64_t n, void* dgate_ptr, void* dup_ptr, int64_t out_stride) {
  const at::Tensor gate = as_rows(gate_in, n), up = as_rows(up_in, n);
  const at::Tensor grad = as_rows(grad_in.to(gate_in.scalar_type()), n);
  const int64_t nrows = gate.size(0);
  const int64_t os = out_stride;
  FASTLM_DISPATCH_FLOATS(gate.scalar_type(), "fastlm_gated_act_bwd", [&] {
    const scalar_t* gp = gate.data_ptr<scalar_t>();
    const scalar_t* up_ = up.data_ptr<scalar_t>();
    const scalar_t* dp = grad.data_ptr<scalar_t>();
    scalar_t* dgp = static_cast<scalar_t*>(dgate_ptr);
    scalar_t* dup_ = static_cast<scalar_t*>(dup_ptr);
    const int64_t gs = gate.stride(0), us = up.stride(0), ds = grad.stride(0);
    at::parallel_for(0, nrows, std::max<int64_t>(1, 8192 / n), [&](int64_t r0, int64_t r1) {
      if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {  // in registers: no conversion passes
        const auto* d16 = reinterpret_cast<const uint16_t*>(dp);
        const auto* g16 = reinterpret_cast<const uint16_t*>(gp);
        const auto* u16 = reinterpret_cast<const uint16_t*>(up_);
        auto* dg16 = reinterpret_cast<uint16_t*>(dgp);
        auto* du16 = reinterpret_cast<uint16_t*>(dup_);
        for (int64_t r = r0; r < r1; ++r)
          gated_act_bwd_row(d16 + r * ds, g16 + r * gs, u16 + r * us, static_cast<int>(act), n, dg16 + r * os,
                            du16 + r * os);
        return;
      }
      std::vector<float> gbuf(n), ubuf(n), dbuf(n), dgbuf(n), dubuf(n);
      for (int64_t r = r0; r < r1; ++r) {
        float* dg = rows::out(dgp + r * os, dgbuf.data());
        float* du = rows::out(dup_ + r * os, dubuf.data());
        gated_act_bwd_row(rows::load(dp + r * ds, dbuf.data(), n), rows::load(gp + r * gs, gbuf.data(), n),
                          rows::load(up_ + r * us, ubuf.data(), n), static_cast<int>(act), n, dg, du);
        rows::store(dg, dgp + r * os, n);
        rows::store(du, dup_ + r * os, n);
      }
    });
  });
}

std::tuple<at::Tensor, at::Tensor> gated_act_bwd(const at::Tensor& grad_in, const at::Tensor& gate_in,
                                                 const at::Tensor& up_in, int64_t act) {
  const int64_t n = check(gate_in, up_in, act, "fastlm::gated_act_bwd");
  TORCH_CHECK(grad_in.sizes() == gate_in.sizes(), "fastlm::gated_act_bwd: grad and gate shapes differ");
  const auto opts = gate_in.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor dgate = at::empty(gate_in.sizes(), opts), dup = at::empty(gate_in.sizes(), opts);
  if (dgate.numel() == 0) return {dgate, dup};
  gated_act_bwd_into(grad_in, gate_in, up_in, act, n, dgate.data_ptr(), dup.data_ptr(), n);
  return {dgate, dup};
}

// h (..., 2n) = [gate | up], one fused projection's output: the gradient comes back as one (..., 2n)
// tensor, so autograd needs no cat of two halves.
int64_t packed_half(const at::Tensor& h, const char* op) {
  TORCH_CHECK(h.dim() >= 1 && h.size(-1) % 2 == 0, op, ": h's last dimension must be even ([gate | up]), got ",
              h.sizes());
  return h.size(-1) / 2;
}

at::Tensor gated_act_fwd_packed(const at::Tensor& h, int64_t act) {
  const int64_t n = packed_half(h, "fastlm::gated_act_fwd_packed");
  return gated_act_fwd(h.narrow(-1, 0, n), h.narrow(-1, n, n), act);
}

at::Tensor gated_act_bwd_packed(const at::Tensor& grad, const at::Tensor& h, int64_t act) {
  const int64_t n = packed_half(h, "fastlm::gated_act_bwd_packed");
  const at::Tensor gate = h.narrow(-1, 0, n), up = h.narrow(-1, n, n);
  check(gate, up, act, "fastlm::gated_act_bwd_packed");
  TORCH_CHECK(grad.sizes() == gate.sizes(), "fastlm::gated_act_bwd_packed: grad's shape ", grad.sizes(),
              " is not h's with half the last dimension");
  at::Tensor dh = at::empty(h.sizes(), h.options().memory_format(at::MemoryFormat::Contiguous));
  if (dh.numel() == 0 || n == 0) return dh;
  gated_act_bwd_into(grad, gate, up, act, n, dh.data_ptr(), static_cast<char*>(dh.data_ptr()) + n * dh.element_size(),
                     2 * n);
  return dh;
}

}  // namespace

// Schemas in fastlm/ops/schemas.py.

TORCH_LIBRARY_IMPL(fastlm, CPU, m) {
  m.impl("gated_act_fwd", &gated_act_fwd);
  m.impl("gated_act_bwd", &gated_act_bwd);
  m.impl("gated_act_fwd_packed", &gated_act_fwd_packed);
  m.impl("gated_act_bwd_packed", &gated_act_bwd_packed);
}

}  // namespace fastlm::cpu
