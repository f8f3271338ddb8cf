// The CPU autograd of fastlm::matmul_fwd, in C++. A decoding-size matmul (M = 1) used to spend more
// time in the Python autograd wrapper of torch.library.register_autograd than in its GEMM. A kernel
// registered for AutogradCPU takes precedence over that Python one (registered for the Autograd
// alias), so CPU tensors come here and CUDA tensors keep the Python autograd around the Triton kernel.
// Same contract as fastlm/ops/matmul.py's _setup/_backward: a is saved only when b needs a gradient,
// pre (the pre-activation) is saved instead of recomputed, and matmul_bwd makes every gradient.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

namespace fastlm::cpu {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> call_fwd(const at::Tensor& a, const at::Tensor& b,
                                            const std::optional<at::Tensor>& bias, const std::string& activation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastlm::matmul_fwd", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const std::optional<at::Tensor>&, c10::string_view)>();
  return op.call(a, b, bias, activation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_bwd(const at::Tensor& grad_out, const at::Tensor& a,
                                                        const at::Tensor& b, const std::optional<at::Tensor>& bias,
                                                        const at::Tensor& pre, const std::string& activation,
                                                        bool needs_a, bool needs_b) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastlm::matmul_bwd", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                           const at::Tensor&, c10::string_view, bool, bool)>();
  return op.call(grad_out, a, b, bias, pre, activation, needs_a, needs_b);
}

class MatmulFunction : public torch::autograd::Function<MatmulFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b,
                               const std::optional<at::Tensor>& bias, const std::string& activation) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, pre] = call_fwd(a, b, bias, activation);
    const bool needs_b = b.requires_grad();  // (the node's edges, needs_input_grad, exist only in backward)
    // b (a weight, alive anyway) is always saved: its layout decides grad_b's.
    ctx->save_for_backward({needs_b ? a : at::Tensor(), b, bias.value_or(at::Tensor()), pre});
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["a_sizes"] = a.sizes().vec();
    ctx->saved_data["a_dtype"] = a.scalar_type();
    ctx->mark_non_differentiable({pre});
    return {out, pre};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    at::Tensor a = saved[0];
    const at::Tensor& b = saved[1];
    const std::optional<at::Tensor> bias = saved[2].defined() ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
    const bool needs_a = ctx->needs_input_grad(0), needs_b = ctx->needs_input_grad(1);
    if (!a.defined()) {  // not needed (grad_b is not): expanded zeros of a's shape, no memory
      a = at::zeros({}, b.options().dtype(ctx->saved_data["a_dtype"].toScalarType()))
              .expand(ctx->saved_data["a_sizes"].toIntVector());
    }
    auto [grad_a, grad_b, grad_bias] = call_bwd(grads[0], a, b, bias, saved[3],
                                                ctx->saved_data["activation"].toStringRef(), needs_a, needs_b);
    return {needs_a ? grad_a : at::Tensor(), needs_b ? grad_b : at::Tensor(),
            bias && ctx->needs_input_grad(2) ? grad_bias : at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> matmul_fwd_autograd(const at::Tensor& a, const at::Tensor& b,
                                                       const std::optional<at::Tensor>& bias,
                                                       c10::string_view activation) {
  const bool any_grad = a.requires_grad() || b.requires_grad() || (bias && bias->requires_grad());
  if (!at::GradMode::is_enabled() || !any_grad) {  // inference (decoding): no graph, straight to the kernel
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_fwd(a, b, bias, std::string(activation));
  }
  auto outs = MatmulFunction::apply(a, b, bias, std::string(activation));
  return {outs[0], outs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlm, AutogradCPU, m) { m.impl("matmul_fwd", &matmul_fwd_autograd); }

}  // namespace fastlm::cpu
