// The fastlm op namespace, with the schemas of the norm ops. Later ops add their schemas with
// TORCH_LIBRARY_FRAGMENT(fastlm, m) next to their own glue code. Implementations register per
// device: C++ CPU kernels in csrc/cpu/, Triton (CUDA) and fake kernels from Python (fastlm/ops/).
#include <torch/library.h>

TORCH_LIBRARY(fastlm, m) {
  // RMSNorm over the last dimension. Returns (y, rstd); rstd is fp32 with shape x.shape[:-1].
  m.def("rms_norm_fwd(Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def("rms_norm_bwd(Tensor grad_y, Tensor x, Tensor weight, Tensor rstd) -> (Tensor, Tensor)");
  // LayerNorm over the last dimension. Returns (y, mean, rstd); mean/rstd fp32 with shape x.shape[:-1].
  m.def("layer_norm_fwd(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("layer_norm_bwd(Tensor grad_y, Tensor x, Tensor weight, Tensor mean, Tensor rstd) -> (Tensor, Tensor, Tensor)");
}
