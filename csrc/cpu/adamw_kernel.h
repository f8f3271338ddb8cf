// AdamW (decoupled weight decay, bias correction) over flat arrays, torch-free: one pass reads
// p, g, m, v and writes p, m, v. fp32 parameters are updated in place; bf16 parameters have an fp32
// master copy that is updated, and the bf16 parameter is rewritten as the master rounded to nearest even.
// Math and order follow torch.optim.AdamW's single-tensor path (fp32):
//   w = w * (1 - lr wd);  m = m + (1 - b1)(g - m);  v = b2 v + (1 - b2) g g
//   w = w + (-lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps),   bc_i = 1 - b_i^step
#pragma once
#include <cstdint>

namespace fastlm::cpu {

enum class AdamwPath : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

const char* adamw_path_name(AdamwPath path);
bool adamw_path_from_name(const char* name, AdamwPath* path);  // false: unknown name
bool adamw_path_supported(AdamwPath path);
AdamwPath adamw_best_path();

// One tensor's arrays and its per-step constants (the step count can differ between tensors).
struct AdamwTensor {
  void* param;             // fp32, or bf16 when master != nullptr
  const void* grad;        // fp32 or bf16 (grad_bf16)
  float* exp_avg;          // fp32
  float* exp_avg_sq;       // fp32
  float* master;           // fp32 master weights of a bf16 param, else nullptr
  bool grad_bf16;
  float decay;             // 1 - lr * weight_decay
  float step_size;         // lr / bc1 (subtracted)
  float bc2_sqrt;          // sqrt(bc2)
};

struct AdamwConsts {
  float one_minus_beta1, beta2, one_minus_beta2, eps;
};

// Elements [i0, i1) of one tensor.
void adamw_update(AdamwPath path, const AdamwTensor& t, const AdamwConsts& c, int64_t i0, int64_t i1);

}  // namespace fastlm::cpu
