// Torch glue for fastlm::sparse24_matmul (schema in fastlm/ops/schemas.py): checks, the zero-padded
// copy of x in the layout the chosen path reads (rows or panels, see sparse24_kernel.h), and the
// split of the output columns over threads. FASTLM_SPARSE24_KERNEL=avx512|avx2|scalar forces a path;
// torch.ops.fastlm.sparse24_cpu_kernels() lists what this CPU runs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "cpu/sparse24_kernel.h"

namespace fastlm::cpu {
namespace {

Sparse24Path chosen_path() {
  const char* env = std::getenv("FASTLM_SPARSE24_KERNEL");
  if (env == nullptr || *env == '\0') return sparse24_best_path();
  Sparse24Path path;
  TORCH_CHECK(sparse24_path_from_name(env, &path), "FASTLM_SPARSE24_KERNEL=", env,
              " is not one of avx512, avx2, scalar");
  TORCH_CHECK(sparse24_path_supported(path), "FASTLM_SPARSE24_KERNEL=", env, ": this CPU does not run it");
  return path;
}

// x (m, k) -> panels (ceil(m / mb), kp, mb): panel p holds rows p*mb .. p*mb+mb-1 side by side, zero-padded.
at::Tensor to_panels(const at::Tensor& x, int64_t kp, int64_t mb) {
  const int64_t m = x.size(0), k = x.size(1), np = (m + mb - 1) / mb;
  at::Tensor panels = at::zeros({np, kp, mb}, x.options());
  const float* src = x.data_ptr<float>();
  float* dst = panels.data_ptr<float>();
  at::parallel_for(0, np, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t rows = std::min(mb, m - p * mb);
      float* d = dst + p * kp * mb;
      for (int64_t r = 0; r < rows; ++r) {
        const float* s = src + (p * mb + r) * k;
        for (int64_t c = 0; c < k; ++c) d[c * mb + r] = s[c];
      }
    }
  });
  return panels;
}

at::Tensor sparse24_matmul(const at::Tensor& x_in, const at::Tensor& values_in, const at::Tensor& meta_in,
                           int64_t in_features, const std::optional<at::Tensor>& bias_in) {
  constexpr const char* op = "fastlm::sparse24_matmul";
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == at::kFloat, op, ": x must be a 2-D float32 tensor");
  TORCH_CHECK(in_features == x_in.size(1) && in_features > 0, op, ": in_features ", in_features,
              " does not match x's ", x_in.size(1), " columns");
  const int64_t groups = (in_features + 3) / 4, meta_stride = (groups + 1) / 2;
  TORCH_CHECK(values_in.dim() == 2 && values_in.scalar_type() == at::kFloat && values_in.size(1) == 2 * groups, op,
              ": values must be float32 (N, ", 2 * groups, ")");
  const int64_t n = values_in.size(0), m = x_in.size(0);
  TORCH_CHECK(meta_in.scalar_type() == at::kByte && meta_in.dim() == 2 && meta_in.size(0) == n &&
                  meta_in.size(1) == meta_stride, op, ": meta must be uint8 (", n, ", ", meta_stride, ")");
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    TORCH_CHECK(bias_in->scalar_type() == at::kFloat && bias_in->numel() == n, op, ": bias must be float32 (", n, ")");
    bias = bias_in->contiguous();
  }
  at::Tensor out = at::empty({m, n}, x_in.options());
  if (m == 0 || n == 0) return out;
  const Sparse24Path path = chosen_path();
  const at::Tensor x = x_in.contiguous(), values = values_in.contiguous(), meta = meta_in.contiguous();
  const int64_t kp = 4 * groups, mb = sparse24_panel_rows(path, m);
  const bool panels = mb > 0 && m > sparse24_gather_max_rows(path);
  at::Tensor xs;
  if (panels) {
    xs = to_panels(x, kp, mb);
  } else if (kp == in_features) {
    xs = x;
  } else {
    xs = at::zeros({m, kp}, x.options());
    xs.narrow(1, 0, in_features).copy_(x);
  }
  Sparse24Args args{xs.data_ptr<float>(), panels, values.data_ptr<float>(), meta.data_ptr<uint8_t>(),
                    bias.defined() ? bias.data_ptr<float>() : nullptr, out.data_ptr<float>(), m, n, groups,
                    meta_stride};
  at::parallel_for(0, n, 64, [&](int64_t n0, int64_t n1) {
    std::vector<float> scratch(static_cast<size_t>(sparse24_scratch_floats(path, m, n1 - n0)));
    sparse24_gemm(path, args, n0, n1, scratch.data());
  });
  return out;
}

std::vector<std::string> sparse24_cpu_kernels() {
  std::vector<std::string> names;
  for (Sparse24Path p : {Sparse24Path::kAvx512, Sparse24Path::kAvx2, Sparse24Path::kScalar}) {
    if (sparse24_path_supported(p)) names.emplace_back(sparse24_path_name(p));
  }
  return names;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastlm, m) {
  // The CPU vector paths this machine runs for sparse24_matmul, best first (for FASTLM_SPARSE24_KERNEL).
  m.def("sparse24_cpu_kernels() -> str[]", &sparse24_cpu_kernels);
}

TORCH_LIBRARY_IMPL(fastlm, CPU, m) { m.impl("sparse24_matmul", &sparse24_matmul); }

}  // namespace fastlm::cpu
