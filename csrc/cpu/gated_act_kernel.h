// Gated activations out = act(gate) * up on fp32 rows (torch-free): SwiGLU (SiLU) and GeGLU
// (exact or tanh GELU). The backward recomputes act(gate) instead of reading a stored copy.
#pragma once
#include <cstdint>

namespace fastlm::cpu {

enum GatedAct : int { kSilu = 0, kGelu = 1, kGeluTanh = 2 };

void gated_act_fwd_row(const float* gate, const float* up, int act, int64_t n, float* out);
// dgate = grad * up * act'(gate), dup = grad * act(gate).
void gated_act_bwd_row(const float* grad, const float* gate, const float* up, int act, int64_t n, float* dgate,
                       float* dup);
// The same on bf16 rows, converted in registers (fp32 math, each output rounded once).
void gated_act_fwd_row(const uint16_t* gate, const uint16_t* up, int act, int64_t n, uint16_t* out);
void gated_act_bwd_row(const uint16_t* grad, const uint16_t* gate, const uint16_t* up, int act, int64_t n,
                       uint16_t* dgate, uint16_t* dup);

}  // namespace fastlm::cpu
