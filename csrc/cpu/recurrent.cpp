// Torch glue for fastlm::recurrent_fwd / recurrent_bwd: the recurrence of one RNN / LSTM / GRU layer
// over a whole sequence, given the input projection xproj (T, B, G*H) of all steps. Per step: one
// GEMM h @ W_hh^T + b_hh (at::addmm into a reused buffer), then one fused pass of the gate math over
// the active rows (recurrent_kernel.cpp). The backward runs the steps in reverse: a fused
// gate-gradient pass and one GEMM for dh_prev per step, then dW_hh over all steps as one GEMM.
// batch_sizes (T,) int64 (empty: all rows) gives the active leading rows per step (packed input).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <vector>

#include "cpu/recurrent_kernel.h"

namespace fastlm::cpu {
namespace {

constexpr const char* kFwd = "fastlm::recurrent_fwd";

int64_t gate_count(int64_t mode) { return mode == kLstm ? 4 : (mode == kGru ? 3 : 1); }
int64_t saved_width(int64_t mode) { return mode == kLstm ? 5 : (mode == kGru ? 4 : 0); }

std::vector<int64_t> active_rows(const at::Tensor& batch_sizes, int64_t T, int64_t B, const char* op) {
  if (batch_sizes.numel() == 0) return std::vector<int64_t>(T, B);
  TORCH_CHECK(batch_sizes.dim() == 1 && batch_sizes.numel() == T, op, ": batch_sizes must be (", T, ",), got ",
              batch_sizes.sizes());
  const at::Tensor sizes = batch_sizes.to(at::kCPU, at::kLong).contiguous();
  const int64_t* p = sizes.data_ptr<int64_t>();
  std::vector<int64_t> rows(p, p + T);
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(rows[t] >= 0 && rows[t] <= B && (t == 0 || rows[t] <= rows[t - 1]), op,
                ": batch_sizes must be non-increasing and within [0, ", B, "], got ", rows[t], " at step ", t);
  }
  return rows;
}

void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32 (fastlm.ops casts), got ",
              t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor");
}

// Rows per task of the gate passes: only big batches are worth splitting (the pass is cheap next
// to the step's GEMM, and a fork/join per step costs more than it saves on small ones).
int64_t grain(int64_t width) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, width)); }

// out = x @ w^T (+ b), for the per-step GEMMs (one weight for every step) and dW_hh: when torch has
// oneDNN, the weight is packed once (mkldnn::_reorder_linear_weight) and each call runs
// mkldnn::_linear_pointwise (about twice as fast as MKL's addmm for these shapes); else at::addmm.
class StepGemm {
 public:
  static constexpr int64_t kOnednnRows = 8;  // below, a GEMV: addmm has less per-call overhead

  StepGemm(const at::Tensor& w, const std::optional<at::Tensor>& b, int64_t rows) : w_(w) {
    if (b.has_value() && b->defined()) b_ = *b;
    auto& dispatcher = c10::Dispatcher::singleton();
    auto reorder = dispatcher.findSchema({"mkldnn::_reorder_linear_weight", ""});
    auto linear = dispatcher.findSchema({"mkldnn::_linear_pointwise", ""});
    if (rows >= kOnednnRows && reorder.has_value() && linear.has_value() && at::hasMKLDNN()) {
      torch::jit::Stack stack{w.contiguous(), c10::IValue(rows)};
      reorder->callBoxed(&stack);
      packed_ = stack.at(0).toTensor();
      linear_ = linear;
    }
  }

  at::Tensor operator()(const at::Tensor& x) const {
    if (linear_.has_value()) {
      torch::jit::Stack stack{x, packed_, b_.defined() ? c10::IValue(b_) : c10::IValue(), c10::IValue(std::string("none")),
                              c10::IValue(c10::List<std::optional<c10::Scalar>>()), c10::IValue(std::string(""))};
      linear_->callBoxed(&stack);
      return stack.at(0).toTensor();
    }
    return b_.defined() ? at::addmm(b_, x, w_.t()) : at::mm(x, w_.t());
  }

 private:
  at::Tensor w_, b_, packed_;
  std::optional<c10::OperatorHandle> linear_;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> recurrent_fwd(
    const at::Tensor& xproj_in, const at::Tensor& w_hh_in, const std::optional<at::Tensor>& b_hh,
    const at::Tensor& h0_in, const at::Tensor& c0_in, const at::Tensor& batch_sizes, int64_t mode) {
  TORCH_CHECK(mode >= 0 && mode <= 3, kFwd, ": mode must be 0..3, got ", mode);
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);  // our GEMMs stay fp32
  TORCH_CHECK(xproj_in.dim() == 3, kFwd, ": xproj must be (seq, batch, gates*hidden), got ", xproj_in.sizes());
  check_float(xproj_in, kFwd, "xproj");
  check_float(w_hh_in, kFwd, "w_hh");
  check_float(h0_in, kFwd, "h0");
  const int64_t T = xproj_in.size(0), B = xproj_in.size(1), H = w_hh_in.size(1), G = gate_count(mode);
  TORCH_CHECK(w_hh_in.dim() == 2 && w_hh_in.size(0) == G * H && xproj_in.size(2) == G * H, kFwd,
              ": w_hh must be (", G, "*hidden, hidden) and xproj (seq, batch, ", G, "*hidden), got ",
              w_hh_in.sizes(), " and ", xproj_in.sizes());
  TORCH_CHECK(h0_in.sizes() == at::IntArrayRef({B, H}), kFwd, ": h0 must be (", B, ", ", H, "), got ", h0_in.sizes());
  if (mode == kLstm) {
    check_float(c0_in, kFwd, "c0");
    TORCH_CHECK(c0_in.sizes() == h0_in.sizes(), kFwd, ": c0 must be (", B, ", ", H, "), got ", c0_in.sizes());
  }
  if (b_hh.has_value() && b_hh->defined()) {
    check_float(*b_hh, kFwd, "b_hh");
    TORCH_CHECK(b_hh->dim() == 1 && b_hh->size(0) == G * H, kFwd, ": b_hh must be (", G * H, ",), got ", b_hh->sizes());
  }
  TORCH_CHECK(T >= 1, kFwd, ": the sequence must have at least one step");
  const std::vector<int64_t> rows = active_rows(batch_sizes, T, B, kFwd);
  const at::Tensor xproj = xproj_in.contiguous();
  at::Tensor out = at::empty({T, B, H}, xproj.options());
  at::Tensor saved = at::empty({T, B, saved_width(mode) * H}, xproj.options());
  at::Tensor h = h0_in.contiguous().clone();
  at::Tensor c = c0_in.contiguous().clone();
  const StepGemm gemm(w_hh_in.contiguous(), b_hh, B);
  const float* xp = xproj.data_ptr<float>();
  float* op = out.data_ptr<float>();
  float* sp = saved.data_ptr<float>();
  float* hp = h.data_ptr<float>();
  float* cp = mode == kLstm ? c.data_ptr<float>() : nullptr;
  const int64_t S = saved_width(mode) * H;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = rows[t];
    if (n < B) {  // inactive rows: zero outputs and saved gates (deterministic, like the reference)
      std::memset(op + (t * B + n) * H, 0, sizeof(float) * (B - n) * H);
      if (S) std::memset(sp + (t * B + n) * S, 0, sizeof(float) * (B - n) * S);
    }
    if (n == 0) continue;
    const at::Tensor hproj = gemm(h.narrow(0, 0, n));
    const float* hpp = hproj.data_ptr<float>();
    at::parallel_for(0, n, grain(G * H), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* x_row = xp + (t * B + r) * G * H;
        const float* hp_row = hpp + r * G * H;
        float* h_row = hp + r * H;
        float* out_row = op + (t * B + r) * H;
        float* saved_row = sp + (t * B + r) * S;
        if (mode == kLstm) {
          lstm_cell_fwd_row(x_row, hp_row, cp + r * H, out_row, saved_row, H);
        } else if (mode == kGru) {
          gru_cell_fwd_row(x_row, hp_row, h_row, out_row, saved_row, H);
        } else {
          rnn_cell_fwd_row(x_row, hp_row, out_row, H, mode == kRnnRelu);
        }
        std::memcpy(h_row, out_row, sizeof(float) * H);
      }
    });
  }
  return {out, h, c, saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> recurrent_bwd(
    const at::Tensor& grad_out_in, const at::Tensor& grad_hn, const at::Tensor& grad_cn, const at::Tensor& xproj,
    const at::Tensor& w_hh_in, const std::optional<at::Tensor>& b_hh, const at::Tensor& h0_in, const at::Tensor& c0_in,
    const at::Tensor& out_in, const at::Tensor& saved_in, const at::Tensor& batch_sizes, int64_t mode) {
  constexpr const char* op = "fastlm::recurrent_bwd";
  TORCH_CHECK(mode >= 0 && mode <= 3, op, ": mode must be 0..3, got ", mode);
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  check_float(grad_out_in, op, "grad_out");
  check_float(grad_hn, op, "grad_hn");
  const int64_t T = out_in.size(0), B = out_in.size(1), H = out_in.size(2), G = gate_count(mode);
  const int64_t S = saved_width(mode) * H;
  TORCH_CHECK(grad_out_in.sizes() == out_in.sizes(), op, ": grad_out must be ", out_in.sizes(), ", got ",
              grad_out_in.sizes());
  TORCH_CHECK(grad_hn.sizes() == at::IntArrayRef({B, H}), op, ": grad_hn must be (", B, ", ", H, ")");
  TORCH_CHECK(saved_in.sizes() == at::IntArrayRef({T, B, S}), op, ": saved must be (", T, ", ", B, ", ", S, ")");
  TORCH_CHECK(T >= 1, op, ": the sequence must have at least one step");
  const std::vector<int64_t> rows = active_rows(batch_sizes, T, B, op);
  const at::Tensor grad_out = grad_out_in.contiguous(), out = out_in.contiguous(), saved = saved_in.contiguous();
  const at::Tensor h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
  at::Tensor dh = grad_hn.contiguous().clone();
  at::Tensor dc = mode == kLstm ? grad_cn.contiguous().clone() : at::zeros_like(c0_in);
  at::Tensor gx = at::empty({T, B, G * H}, out.options());
  at::Tensor gh = mode == kGru ? at::empty({T, B, G * H}, out.options()) : gx;  // d(hproj); == gx but for the GRU
  const float* go = grad_out.data_ptr<float>();
  const float* o = out.data_ptr<float>();
  const float* sv = saved.data_ptr<float>();
  const float* h0p = h0.data_ptr<float>();
  const float* c0p = mode == kLstm ? c0.data_ptr<float>() : nullptr;
  float* dhp = dh.data_ptr<float>();
  float* dcp = mode == kLstm ? dc.data_ptr<float>() : nullptr;
  float* gxp = gx.data_ptr<float>();
  float* ghp = gh.data_ptr<float>();
  const StepGemm back(w_hh_in.t().contiguous(), std::nullopt, B);  // dh_prev += d(hproj) @ W_hh
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t n = rows[t];
    if (n < B) {
      std::memset(gxp + (t * B + n) * G * H, 0, sizeof(float) * (B - n) * G * H);
      if (mode == kGru) std::memset(ghp + (t * B + n) * G * H, 0, sizeof(float) * (B - n) * G * H);
    }
    if (n == 0) continue;
    at::parallel_for(0, n, grain(G * H), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        float* dh_row = dhp + r * H;
        const float* go_row = go + (t * B + r) * H;
        for (int64_t j = 0; j < H; ++j) dh_row[j] += go_row[j];
        const float* s_row = sv + (t * B + r) * S;
        float* gx_row = gxp + (t * B + r) * G * H;
        if (mode == kLstm) {
          const float* c_prev = t > 0 ? sv + ((t - 1) * B + r) * S + 4 * H : c0p + r * H;
          lstm_cell_bwd_row(s_row, c_prev, dh_row, dcp + r * H, gx_row, H);
        } else if (mode == kGru) {
          const float* h_prev = t > 0 ? o + ((t - 1) * B + r) * H : h0p + r * H;
          gru_cell_bwd_row(s_row, h_prev, dh_row, gx_row, ghp + (t * B + r) * G * H, H);
        } else {
          rnn_cell_bwd_row(o + (t * B + r) * H, dh_row, gx_row, H, mode == kRnnRelu);
        }
      }
    });
    dh.narrow(0, 0, n).add_(back(gh[t].narrow(0, 0, n)));
  }
  // dW_hh = sum_t d(hproj)_t^T h_{t-1}, one GEMM over all steps (h_{t-1}: h0, then out[:-1]).
  // As a linear: X = d(hproj)^T (G*H, T*B), W = h_prev^T (H, T*B).
  const at::Tensor h_prev = at::cat({h0.unsqueeze(0), out.narrow(0, 0, T - 1)}).reshape({T * B, H});
  const at::Tensor grad_w = StepGemm(h_prev.t().contiguous(), std::nullopt, G * H)(gh.reshape({T * B, G * H}).t());
  at::Tensor grad_b = (b_hh.has_value() && b_hh->defined()) ? gh.sum({0, 1}) : at::empty({0}, out.options());
  (void)xproj;
  return {gx, dh, dc, grad_w, grad_b};
}

// One step of a whole stack of layers for decoding (no autograd): x (B, I), weights per layer
// [w_ih, w_hh, b_ih, b_hh] (an empty bias: none), h0/c0 (L, B, H). Two small GEMMs and one fused gate
// pass per layer, all in one op call (no per-layer Python).
std::tuple<at::Tensor, at::Tensor, at::Tensor> recurrent_step(const at::Tensor& x_in, at::TensorList weights,
                                                              const at::Tensor& h0, const at::Tensor& c0, int64_t mode) {
  constexpr const char* op = "fastlm::recurrent_step";
  TORCH_CHECK(mode >= 0 && mode <= 3, op, ": mode must be 0..3, got ", mode);
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  TORCH_CHECK(!weights.empty() && weights.size() % 4 == 0, op, ": weights must be 4 tensors per layer, got ",
              weights.size());
  const int64_t L = static_cast<int64_t>(weights.size() / 4);
  TORCH_CHECK(x_in.dim() == 2 && h0.dim() == 3 && h0.size(0) == L && h0.size(1) == x_in.size(0), op,
              ": x must be (batch, input) and h0 (layers, batch, hidden), got ", x_in.sizes(), " and ", h0.sizes());
  check_float(x_in, op, "x");
  check_float(h0, op, "h0");
  const int64_t B = x_in.size(0), H = h0.size(2), G = gate_count(mode), S = saved_width(mode) * H;
  at::Tensor h_n = h0.contiguous().clone();
  at::Tensor c_n = mode == kLstm ? c0.contiguous().clone() : c0;
  if (mode == kLstm) TORCH_CHECK(c_n.sizes() == h_n.sizes(), op, ": c0 must be ", h_n.sizes(), ", got ", c0.sizes());
  at::Tensor x = x_in.contiguous();
  std::vector<float> saved(static_cast<size_t>(std::max<int64_t>(1, S)));
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor &w_ih = weights[4 * l], &w_hh = weights[4 * l + 1], &b_ih = weights[4 * l + 2],
                     &b_hh = weights[4 * l + 3];
    TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == G * H && w_ih.size(1) == x.size(1) && w_hh.dim() == 2 &&
                    w_hh.size(0) == G * H && w_hh.size(1) == H,
                op, ": layer ", l, " weights have the wrong shape: ", w_ih.sizes(), " and ", w_hh.sizes());
    check_float(w_ih, op, "w_ih");
    check_float(w_hh, op, "w_hh");
    at::Tensor h = h_n[l];
    const at::Tensor xp = b_ih.numel() ? at::addmm(b_ih, x, w_ih.t()) : at::mm(x, w_ih.t());
    const at::Tensor hp = b_hh.numel() ? at::addmm(b_hh, h, w_hh.t()) : at::mm(h, w_hh.t());
    at::Tensor out = at::empty({B, H}, x.options());
    const float* xpp = xp.data_ptr<float>();
    const float* hpp = hp.data_ptr<float>();
    float* hptr = h.data_ptr<float>();
    float* optr = out.data_ptr<float>();
    for (int64_t r = 0; r < B; ++r) {
      if (mode == kLstm) {
        lstm_cell_fwd_row(xpp + r * G * H, hpp + r * G * H, c_n[l].data_ptr<float>() + r * H, optr + r * H,
                          saved.data(), H);
      } else if (mode == kGru) {
        gru_cell_fwd_row(xpp + r * G * H, hpp + r * G * H, hptr + r * H, optr + r * H, saved.data(), H);
      } else {
        rnn_cell_fwd_row(xpp + r * G * H, hpp + r * G * H, optr + r * H, H, mode == kRnnRelu);
      }
    }
    h.copy_(out);
    x = out;
  }
  return {x, h_n, c_n};
}

}  // namespace

// Schemas in fastlm/ops/schemas.py.

TORCH_LIBRARY_IMPL(fastlm, CPU, m) {
  m.impl("recurrent_fwd", &recurrent_fwd);
  m.impl("recurrent_bwd", &recurrent_bwd);
  m.impl("recurrent_step", &recurrent_step);
}

}  // namespace fastlm::cpu
