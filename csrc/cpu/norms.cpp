// Torch glue for the CPU RMSNorm / LayerNorm kernels: checks, dtype conversion, threading.
// Rows are spread over torch's thread pool (at::parallel_for); each row is normalized in fp32.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "cpu/float_rows.h"  // row loads/stores in fp32; includes norm_rows.h

namespace fastlm::cpu {
namespace {

int64_t check_norm_args(const at::Tensor& x, const at::Tensor& weight, const char* op) {
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension");
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
              ": x must be float32, bfloat16 or float16, got ", dtype);
  const int64_t n = x.size(-1);
  TORCH_CHECK(n > 0, op, ": the normalized (last) dimension of x is empty");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == n, op, ": weight must have shape (", n, ",), got ",
              weight.sizes());
  TORCH_CHECK(x.device() == weight.device(), op, ": x and weight are on different devices");
  return n;
}

at::Tensor stat_like(const at::Tensor& x) {  // fp32 tensor of shape x.shape[:-1]
  return at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(at::kFloat));
}

int64_t row_grain(int64_t n) { return std::max<int64_t>(1, 16384 / n); }

// Rows are split in a fixed number of chunks, one weight-gradient partial each, summed in a fixed
// order: the result is deterministic for a given thread count.
template <typename RowFn>
void for_row_chunks(int64_t rows, int64_t n, std::vector<at::Tensor>& partials, int num_partials, RowFn fn) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(rows, at::get_num_threads()));
  for (int p = 0; p < num_partials; ++p) partials.push_back(at::zeros({chunks, n}, at::kFloat));
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) fn(c, rows * c / chunks, rows * (c + 1) / chunks);
  });
}

at::Tensor sum_partials(const at::Tensor& partials, int64_t n) {
  at::Tensor out = at::zeros({n}, at::kFloat);
  for (int64_t c = 0; c < partials.size(0); ++c)
    add_into(partials[c].data_ptr<float>(), out.data_ptr<float>(), n);
  return out;
}

// y in out_dtype (default x's): a pre-norm block under autocast asks for the autocast dtype, so the
// Linears after it take y as it is instead of casting an fp32 copy (and its gradient back).
std::tuple<at::Tensor, at::Tensor> rms_norm_fwd(const at::Tensor& x_in, const at::Tensor& weight, double eps,
                                                std::optional<at::ScalarType> out_dtype) {
  const int64_t n = check_norm_args(x_in, weight, "fastlm::rms_norm_fwd");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w = weight.contiguous().to(at::kFloat);
  at::Tensor y = at::empty(x.sizes(), x.options().dtype(out_dtype.value_or(x.scalar_type())));
  rows::check_float_dtype(y, "fastlm::rms_norm_fwd", "out_dtype");
  at::Tensor rstd = stat_like(x);
  const int64_t rows = x.numel() / n;
  FASTLM_DISPATCH_FLOATS(x.scalar_type(), "fastlm_rms_norm_fwd", [&] {
    using x_t = scalar_t;
    FASTLM_DISPATCH_FLOATS(y.scalar_type(), "fastlm_rms_norm_fwd", [&] {
      const x_t* xp = x.data_ptr<x_t>();
      scalar_t* yp = y.data_ptr<scalar_t>();
      float* rp = rstd.data_ptr<float>();
      const float* wp = w.data_ptr<float>();
      at::parallel_for(0, rows, row_grain(n), [&](int64_t r0, int64_t r1) {
        std::vector<float> xbuf(n), ybuf(n);
        for (int64_t r = r0; r < r1; ++r) {
          const float* xr = rows::load(xp + r * n, xbuf.data(), n);
          float* yr = rows::out(yp + r * n, ybuf.data());
          rp[r] = rms_norm_row_fwd(xr, wp, static_cast<float>(eps), n, yr);
          rows::store(yr, yp + r * n, n);
        }
      });
    });
  });
  return {y, rstd};
}

// grad_y may be in another dtype than x (y was emitted in the autocast dtype): read as it is, dx in x's.
std::tuple<at::Tensor, at::Tensor> rms_norm_bwd(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                const at::Tensor& weight, const at::Tensor& rstd_in) {
  const int64_t n = check_norm_args(x_in, weight, "fastlm::rms_norm_bwd");
  TORCH_CHECK(grad_in.sizes() == x_in.sizes(), "fastlm::rms_norm_bwd: grad_y and x shapes differ");
  rows::check_float_dtype(grad_in, "fastlm::rms_norm_bwd", "grad_y");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor g = grad_in.contiguous();
  const at::Tensor w = weight.contiguous().to(at::kFloat);
  const at::Tensor rstd = rstd_in.contiguous().to(at::kFloat);
  at::Tensor dx = at::empty_like(x);
  const int64_t rows = x.numel() / n;
  std::vector<at::Tensor> partials;
  FASTLM_DISPATCH_FLOATS(x.scalar_type(), "fastlm_rms_norm_bwd", [&] {
    using x_t = scalar_t;
    FASTLM_DISPATCH_FLOATS(g.scalar_type(), "fastlm_rms_norm_bwd", [&] {
      const x_t* xp = x.data_ptr<x_t>();
      const scalar_t* gp = g.data_ptr<scalar_t>();
      x_t* dxp = dx.data_ptr<x_t>();
      const float* wp = w.data_ptr<float>();
      const float* rp = rstd.data_ptr<float>();
      for_row_chunks(rows, n, partials, 1, [&](int64_t c, int64_t r0, int64_t r1) {
        std::vector<float> xbuf(n), gbuf(n), dxbuf(n);
        float* dw = partials[0].data_ptr<float>() + c * n;
        for (int64_t r = r0; r < r1; ++r) {
          const float* xr = rows::load(xp + r * n, xbuf.data(), n);
          const float* gr = rows::load(gp + r * n, gbuf.data(), n);
          float* dxr = rows::out(dxp + r * n, dxbuf.data());
          rms_norm_row_bwd(gr, xr, wp, rp[r], n, dxr, dw);
          rows::store(dxr, dxp + r * n, n);
        }
      });
    });
  });
  return {dx, sum_partials(partials[0], n).to(weight.scalar_type())};
}

// A pre-norm block's residual add fused with the next RMSNorm: x_sum = x + branch (in x's dtype; branch may
// be the 16-bit output of a Linear under autocast: converted in the row, no fp32 temporary), y =
// rms_norm(x_sum) in out_dtype. The norm reads the sum from the row buffer instead of memory.
std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_fwd(const at::Tensor& x_in, const at::Tensor& branch_in,
                                                                const at::Tensor& weight, double eps,
                                                                std::optional<at::ScalarType> out_dtype) {
  const char* op = "fastlm::add_rms_norm_fwd";
  const int64_t n = check_norm_args(x_in, weight, op);
  TORCH_CHECK(branch_in.sizes() == x_in.sizes(), op, ": x and branch shapes differ: ", x_in.sizes(), " vs ",
              branch_in.sizes());
  rows::check_float_dtype(branch_in, op, "branch");
  const at::Tensor x = x_in.contiguous(), b = branch_in.contiguous();
  const at::Tensor w = weight.contiguous().to(at::kFloat);
  at::Tensor x_sum = at::empty(x.sizes(), x.options());
  at::Tensor y = at::empty(x.sizes(), x.options().dtype(out_dtype.value_or(x.scalar_type())));
  rows::check_float_dtype(y, op, "out_dtype");
  at::Tensor rstd = stat_like(x);
  const int64_t rows = x.numel() / n;
  FASTLM_DISPATCH_FLOATS(x.scalar_type(), "fastlm_add_rms_norm_fwd", [&] {
    using x_t = scalar_t;
    FASTLM_DISPATCH_FLOATS(b.scalar_type(), "fastlm_add_rms_norm_fwd", [&] {
      using b_t = scalar_t;
      FASTLM_DISPATCH_FLOATS(y.scalar_type(), "fastlm_add_rms_norm_fwd", [&] {
        const x_t* xp = x.data_ptr<x_t>();
        const b_t* bp = b.data_ptr<b_t>();
        x_t* sp = x_sum.data_ptr<x_t>();
        scalar_t* yp = y.data_ptr<scalar_t>();
        float* rp = rstd.data_ptr<float>();
        const float* wp = w.data_ptr<float>();
        at::parallel_for(0, rows, row_grain(n), [&](int64_t r0, int64_t r1) {
          std::vector<float> xbuf(n), bbuf(n), sbuf(n), s2buf(n), ybuf(n);
          for (int64_t r = r0; r < r1; ++r) {
            const float* xr = rows::load(xp + r * n, xbuf.data(), n);
            const float* br = rows::load(bp + r * n, bbuf.data(), n);
            float* sr = rows::out(sp + r * n, sbuf.data());
            for (int64_t i = 0; i < n; ++i) sr[i] = xr[i] + br[i];
            rows::store(sr, sp + r * n, n);
            const float* s = rows::load(sp + r * n, s2buf.data(), n);  // the sum as stored (rounded to x's dtype)
            float* yr = rows::out(yp + r * n, ybuf.data());
            rp[r] = rms_norm_row_fwd(s, wp, static_cast<float>(eps), n, yr);
            rows::store(yr, yp + r * n, n);
          }
        });
      });
    });
  });
  return {x_sum, y, rstd};
}

// d(x_sum) = grad_sum + rms_norm's input gradient: returned as x's gradient (x's dtype) and as branch's
// (branch_dtype) from the same row, where autograd would add the two and cast a copy for the branch.
std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_bwd(const at::Tensor& grad_sum_in,
                                                                const at::Tensor& grad_y_in, const at::Tensor& x_sum_in,
                                                                const at::Tensor& weight, const at::Tensor& rstd_in,
                                                                at::ScalarType branch_dtype) {
  const char* op = "fastlm::add_rms_norm_bwd";
  const int64_t n = check_norm_args(x_sum_in, weight, op);
  TORCH_CHECK(grad_y_in.sizes() == x_sum_in.sizes() && grad_sum_in.sizes() == x_sum_in.sizes(), op,
              ": grad_sum, grad_y and x_sum shapes differ");
  rows::check_float_dtype(grad_y_in, op, "grad_y");
  TORCH_CHECK(grad_sum_in.scalar_type() == x_sum_in.scalar_type(), op, ": grad_sum must be in x_sum's dtype");
  const at::Tensor s = x_sum_in.contiguous(), gsum = grad_sum_in.contiguous(), gy = grad_y_in.contiguous();
  const at::Tensor w = weight.contiguous().to(at::kFloat);
  const at::Tensor rstd = rstd_in.contiguous().to(at::kFloat);
  at::Tensor dx = at::empty_like(s);
  at::Tensor db = at::empty(s.sizes(), s.options().dtype(branch_dtype));
  rows::check_float_dtype(db, op, "branch_dtype");
  const int64_t rows = s.numel() / n;
  std::vector<at::Tensor> partials;
  FASTLM_DISPATCH_FLOATS(s.scalar_type(), "fastlm_add_rms_norm_bwd", [&] {
    using x_t = scalar_t;
    FASTLM_DISPATCH_FLOATS(gy.scalar_type(), "fastlm_add_rms_norm_bwd", [&] {
      using g_t = scalar_t;
      FASTLM_DISPATCH_FLOATS(db.scalar_type(), "fastlm_add_rms_norm_bwd", [&] {
        const x_t* sp = s.data_ptr<x_t>();
        const x_t* gsp = gsum.data_ptr<x_t>();
        const g_t* gp = gy.data_ptr<g_t>();
        x_t* dxp = dx.data_ptr<x_t>();
        scalar_t* dbp = db.data_ptr<scalar_t>();
        const float* wp = w.data_ptr<float>();
        const float* rp = rstd.data_ptr<float>();
        for_row_chunks(rows, n, partials, 1, [&](int64_t c, int64_t r0, int64_t r1) {
          std::vector<float> sbuf(n), gbuf(n), gsbuf(n), dxbuf(n), dbbuf(n);
          float* dw = partials[0].data_ptr<float>() + c * n;
          for (int64_t r = r0; r < r1; ++r) {
            const float* sr = rows::load(sp + r * n, sbuf.data(), n);
            const float* gr = rows::load(gp + r * n, gbuf.data(), n);
            const float* gsr = rows::load(gsp + r * n, gsbuf.data(), n);
            float* dxr = rows::out(dxp + r * n, dxbuf.data());
            rms_norm_row_bwd(gr, sr, wp, rp[r], n, dxr, dw);
            for (int64_t i = 0; i < n; ++i) dxr[i] += gsr[i];
            rows::store(dxr, dxp + r * n, n);
            float* dbr = rows::out(dbp + r * n, dbbuf.data());
            if (dbr != dxr) std::copy(dxr, dxr + n, dbr);
            rows::store(dbr, dbp + r * n, n);
          }
        });
      });
    });
  });
  return {dx, db, sum_partials(partials[0], n).to(weight.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd(const at::Tensor& x_in, const at::Tensor& weight,
                                                              const at::Tensor& bias, double eps) {
  const int64_t n = check_norm_args(x_in, weight, "fastlm::layer_norm_fwd");
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == n, "fastlm::layer_norm_fwd: bias must have shape (", n, ",), got ",
              bias.sizes());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w = weight.contiguous().to(at::kFloat);
  const at::Tensor b = bias.contiguous().to(at::kFloat);
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = stat_like(x);
  at::Tensor rstd = stat_like(x);
  const int64_t rows = x.numel() / n;
  FASTLM_DISPATCH_FLOATS(x.scalar_type(), "fastlm_layer_norm_fwd", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    float* mp = mean.data_ptr<float>();
    float* rp = rstd.data_ptr<float>();
    const float* wp = w.data_ptr<float>();
    const float* bp = b.data_ptr<float>();
    at::parallel_for(0, rows, row_grain(n), [&](int64_t r0, int64_t r1) {
      std::vector<float> xbuf(n), ybuf(n);
      for (int64_t r = r0; r < r1; ++r) {
        const float* xr = rows::load(xp + r * n, xbuf.data(), n);
        float* yr = rows::out(yp + r * n, ybuf.data());
        layer_norm_row_fwd(xr, wp, bp, static_cast<float>(eps), n, yr, mp + r, rp + r);
        rows::store(yr, yp + r * n, n);
      }
    });
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                              const at::Tensor& weight, const at::Tensor& mean_in,
                                                              const at::Tensor& rstd_in) {
  const int64_t n = check_norm_args(x_in, weight, "fastlm::layer_norm_bwd");
  TORCH_CHECK(grad_in.sizes() == x_in.sizes(), "fastlm::layer_norm_bwd: grad_y and x shapes differ");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor g = grad_in.contiguous().to(x.scalar_type());
  const at::Tensor w = weight.contiguous().to(at::kFloat);
  const at::Tensor mean = mean_in.contiguous().to(at::kFloat);
  const at::Tensor rstd = rstd_in.contiguous().to(at::kFloat);
  at::Tensor dx = at::empty_like(x);
  const int64_t rows = x.numel() / n;
  std::vector<at::Tensor> partials;
  FASTLM_DISPATCH_FLOATS(x.scalar_type(), "fastlm_layer_norm_bwd", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    const float* wp = w.data_ptr<float>();
    const float* mp = mean.data_ptr<float>();
    const float* rp = rstd.data_ptr<float>();
    for_row_chunks(rows, n, partials, 2, [&](int64_t c, int64_t r0, int64_t r1) {
      std::vector<float> xbuf(n), gbuf(n), dxbuf(n);
      float* dw = partials[0].data_ptr<float>() + c * n;
      float* db = partials[1].data_ptr<float>() + c * n;
      for (int64_t r = r0; r < r1; ++r) {
        const float* xr = rows::load(xp + r * n, xbuf.data(), n);
        const float* gr = rows::load(gp + r * n, gbuf.data(), n);
        float* dxr = rows::out(dxp + r * n, dxbuf.data());
        layer_norm_row_bwd(gr, xr, wp, mp[r], rp[r], n, dxr, dw, db);
        rows::store(dxr, dxp + r * n, n);
      }
    });
  });
  return {dx, sum_partials(partials[0], n).to(weight.scalar_type()), sum_partials(partials[1], n).to(weight.scalar_type())};
}

}  // namespace

// Schemas in fastlm/ops/schemas.py.
TORCH_LIBRARY_IMPL(fastlm, CPU, m) {
  m.impl("rms_norm_fwd", &rms_norm_fwd);
  m.impl("rms_norm_bwd", &rms_norm_bwd);
  m.impl("add_rms_norm_fwd", &add_rms_norm_fwd);
  m.impl("add_rms_norm_bwd", &add_rms_norm_bwd);
  m.impl("layer_norm_fwd", &layer_norm_fwd);
  m.impl("layer_norm_bwd", &layer_norm_bwd);
}

}  // namespace fastlm::cpu
