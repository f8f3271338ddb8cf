// Distillation losses of one row (torch-free, fp32 buffers): see fastlm/ops/reference_distill.py.
// a = s / T (student), teacher p = softmax(t / T) or top-k bins; loss 0 kl (KL(p||q)), 1 reverse_kl,
// 2 generalized jsd (weight beta on the teacher; the caller maps beta 0 / 1 to kl / reverse_kl).
// Both return the divergence times T^2 and, when grad is not null, write grad = g T dL/da
// (= g d(T^2 L)/ds). work: v floats of scratch.
#pragma once
#include <cstdint>

namespace fastlm::cpu {

float distill_row_full(const float* s, const float* t, int64_t v, int loss, float beta, float temperature, float g,
                       float* grad, float* work);
// lp: the teacher's log-probabilities (k + 1) at index (k) and of the tail (last).
float distill_row_topk(const float* s, const float* lp, const int64_t* index, int64_t v, int64_t k, int loss,
                       float beta, float temperature, float g, float* grad, float* work);

}  // namespace fastlm::cpu
