// fp32 GEMM on the faster of torch's BLAS and oneDNN. torch's fp32 GEMM is MKL's, which takes an
// AVX2 path on AMD CPUs that have AVX-512; oneDNN (inside torch) picks its kernels by instruction
// set and runs AVX-512 there: 2-3x faster on those machines, on par elsewhere. A one-time probe
// per process times both on a transformer-block-sized product and keeps the faster, by a clear
// margin so that close calls stay on torch (the same choice on every run).
// FASTLM_CPU_GEMM32=auto (default) | torch | onednn forces one (tests run both).
#include "gemm32.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <optional>

namespace fastlm::cpu {
namespace {

constexpr int64_t kOnednnRows = 8;  // fewer rows: a GEMV, where at::mm has less per-call overhead

std::optional<c10::OperatorHandle> onednn_linear() {
  static const std::optional<c10::OperatorHandle> op = [] {
    auto handle = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
    return at::hasMKLDNN() ? handle : std::nullopt;
  }();
  return op;
}

// x @ w^T by oneDNN: w (N x K) is y^T, a view when y is a transposed weight (the usual b = weight.t()).
at::Tensor onednn_mm(const c10::OperatorHandle& linear, const at::Tensor& x, const at::Tensor& y) {
  torch::jit::Stack stack{x, y.t(), c10::IValue(), c10::IValue(std::string("none")),
                          c10::IValue(c10::List<std::optional<c10::Scalar>>()), c10::IValue(std::string(""))};
  linear.callBoxed(&stack);
  return stack.at(0).toTensor();
}

template <class Gemm>
double best_seconds(Gemm gemm) {
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {  // the first run warms up (oneDNN primitive creation)
    const auto t0 = std::chrono::steady_clock::now();
    gemm();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (rep > 0) best = std::min(best, s);
  }
  return best;
}

bool onednn_is_faster(const c10::OperatorHandle& linear) {
  // Constant data: the global random generator must not move (runs stay reproducible).
  const auto x = at::full({256, 384}, 0.5f), w = at::full({1152, 384}, 0.25f);
  const double torch_s = best_seconds([&] { at::mm(x, w.t()); });
  const double onednn_s = best_seconds([&] { onednn_mm(linear, x, w.t()); });
  return 1.25 * onednn_s <= torch_s;
}

bool use_onednn() {
  const auto linear = onednn_linear();
  const char* env = std::getenv("FASTLM_CPU_GEMM32");
  const std::string mode = env ? env : "auto";
  TORCH_CHECK(mode == "auto" || mode.empty() || mode == "torch" || mode == "onednn", "FASTLM_CPU_GEMM32=", mode,
              " is not one of auto, torch, onednn");
  if (mode == "torch") return false;
  if (mode == "onednn") {
    TORCH_CHECK(linear.has_value(), "FASTLM_CPU_GEMM32=onednn: this torch build has no oneDNN");
    return true;
  }
  if (!linear.has_value()) return false;
  static std::atomic<int> choice{-1};  // -1: not measured yet
  if (choice.load() < 0) choice.store(onednn_is_faster(*linear) ? 1 : 0);
  return choice.load() == 1;
}

}  // namespace

bool gemm32_onednn(int64_t rows) { return rows >= kOnednnRows && use_onednn(); }

at::Tensor mm_f32(const at::Tensor& x, const at::Tensor& y) {
  if (x.size(1) > 0 && gemm32_onednn(x.size(0))) return onednn_mm(*onednn_linear(), x, y);
  return at::mm(x, y);
}

std::string gemm32_path() { return use_onednn() ? "onednn" : "torch"; }

// matmul_cpu_gemm32: which GEMM runs (benchmarks print it). mm_f32: for fp32 products that Python code makes
// itself (the chunked LM head of linear_cross_entropy), so they run on the same GEMM as fastlm.ops.matmul.
TORCH_LIBRARY_FRAGMENT(fastlm, m) {
  m.def("matmul_cpu_gemm32() -> str", [] { return gemm32_path(); });
  m.def("mm_f32(Tensor x, Tensor y) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastlm, CPU, m) {
  m.impl("mm_f32", [](const at::Tensor& x, const at::Tensor& y) {
    TORCH_CHECK(x.scalar_type() == at::kFloat && y.scalar_type() == at::kFloat && x.dim() == 2 && y.dim() == 2 &&
                    x.size(1) == y.size(0),
                "fastlm::mm_f32: expected fp32 (M, K) and (K, N), got ", x.scalar_type(), x.sizes(), " and ",
                y.scalar_type(), y.sizes());
    return mm_f32(x, y);
  });
}

}  // namespace fastlm::cpu
