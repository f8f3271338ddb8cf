// Torch glue for fastlm::adamw_step_ (schema in fastlm/ops/schemas.py): checks, per-tensor constants,
// and one at::parallel_for over the concatenated elements of all tensors (so many small tensors still
// split evenly over threads). FASTLM_ADAMW_KERNEL=avx512|avx2|scalar forces a path;
// torch.ops.fastlm.adamw_cpu_kernels() lists what this CPU runs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "cpu/adamw_kernel.h"

namespace fastlm::cpu {
namespace {

constexpr const char* kOp = "fastlm::adamw_step_";

AdamwPath chosen_path() {
  const char* env = std::getenv("FASTLM_ADAMW_KERNEL");
  if (env == nullptr || *env == '\0') return adamw_best_path();
  AdamwPath path;
  TORCH_CHECK(adamw_path_from_name(env, &path), "FASTLM_ADAMW_KERNEL=", env, " is not one of avx512, avx2, scalar");
  TORCH_CHECK(adamw_path_supported(path), "FASTLM_ADAMW_KERNEL=", env, ": this CPU does not run it");
  return path;
}

void check_state(const at::Tensor& t, const at::Tensor& p, const char* name, size_t i) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == p.numel() && t.is_cpu(), kOp,
              ": ", name, "[", i, "] must be a contiguous float32 CPU tensor of ", p.numel(), " elements");
}

void adamw_step_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                 at::TensorList masters, at::TensorList steps, double lr, double beta1, double beta2,
                 double eps, double weight_decay) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n && masters.size() == n &&
                  steps.size() == n, kOp, ": params, grads, exp_avgs, exp_avg_sqs, masters and steps differ in length");
  std::vector<AdamwTensor> ts(n);
  std::vector<int64_t> ends(n);  // prefix sums of the element counts
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor &p = params[i], &g = grads[i], &master = masters[i];
    const bool has_master = master.numel() > 0 || p.scalar_type() != at::kFloat;
    TORCH_CHECK(p.is_cpu() && p.is_contiguous(), kOp, ": params[", i, "] must be a contiguous CPU tensor");
    TORCH_CHECK(p.scalar_type() == (has_master ? at::kBFloat16 : at::kFloat), kOp, ": params[", i,
                "] must be float32 (no master) or bfloat16 (with a float32 master), got ", p.scalar_type());
    TORCH_CHECK(g.is_cpu() && g.is_contiguous() && g.numel() == p.numel() &&
                    (g.scalar_type() == at::kFloat || g.scalar_type() == at::kBFloat16),
                kOp, ": grads[", i, "] must be a contiguous float32 or bfloat16 CPU tensor of ", p.numel(),
                " elements");
    check_state(exp_avgs[i], p, "exp_avgs", i);
    check_state(exp_avg_sqs[i], p, "exp_avg_sqs", i);
    if (has_master) check_state(master, p, "masters", i);
    TORCH_CHECK(steps[i].is_cpu() && steps[i].scalar_type() == at::kFloat && steps[i].numel() == 1, kOp,
                ": steps[", i, "] must be a one-element float32 CPU tensor");
    ts[i] = AdamwTensor{p.data_ptr(),
                        g.data_ptr(),
                        exp_avgs[i].data_ptr<float>(),
                        exp_avg_sqs[i].data_ptr<float>(),
                        has_master ? master.data_ptr<float>() : nullptr,
                        g.scalar_type() == at::kBFloat16,
                        static_cast<float>(1.0 - lr * weight_decay),
                        0.0f,
                        0.0f};
    total += p.numel();
    ends[i] = total;
  }
  // Every input checked: count the step, then (as torch) bias corrections in double, the element math in float.
  for (size_t i = 0; i < n; ++i) {
    float* count = steps[i].data_ptr<float>();
    *count += 1.0f;
    const double bc1 = 1.0 - std::pow(beta1, *count), bc2 = 1.0 - std::pow(beta2, *count);
    ts[i].step_size = static_cast<float>(lr / bc1);
    ts[i].bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  }
  if (total == 0) return;
  const AdamwConsts consts{static_cast<float>(1.0 - beta1), static_cast<float>(beta2),
                           static_cast<float>(1.0 - beta2), static_cast<float>(eps)};
  const AdamwPath path = chosen_path();
  at::parallel_for(0, total, 1 << 15, [&](int64_t e0, int64_t e1) {
    size_t i = std::upper_bound(ends.begin(), ends.end(), e0) - ends.begin();
    for (; i < n && e0 < e1; ++i) {
      const int64_t start = ends[i] - params[i].numel();
      const int64_t stop = std::min(ends[i], e1);
      adamw_update(path, ts[i], consts, e0 - start, stop - start);
      e0 = stop;
    }
  });
}

std::vector<std::string> adamw_cpu_kernels() {
  std::vector<std::string> names;
  for (AdamwPath p : {AdamwPath::kAvx512, AdamwPath::kAvx2, AdamwPath::kScalar}) {
    if (adamw_path_supported(p)) names.emplace_back(adamw_path_name(p));
  }
  return names;
}

std::string adamw_cpu_kernel() { return adamw_path_name(chosen_path()); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastlm, m) {
  // The CPU vector paths this machine runs for adamw_step_, best first (for FASTLM_ADAMW_KERNEL),
  // and the one a call uses now.
  m.def("adamw_cpu_kernels() -> str[]", &adamw_cpu_kernels);
  m.def("adamw_cpu_kernel() -> str", &adamw_cpu_kernel);
}

TORCH_LIBRARY_IMPL(fastlm, CPU, m) { m.impl("adamw_step_", &adamw_step_); }

}  // namespace fastlm::cpu
