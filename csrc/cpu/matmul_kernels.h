// Epilogue math of the fused matmul (torch-free, fp32 rows): bias, activation and its derivative.
// The torch glue (matmul.cpp) runs the GEMM and converts rows between fp32 and 16 bits.
#pragma once
#include <cstdint>

namespace fastlm::cpu {

enum class Activation : int { kNone = 0, kGelu = 1, kGeluTanh = 2, kSilu = 3 };

// x[i] += bias[i] for n values.
void add_bias(float* x, const float* bias, int64_t n);
// x[i] = act(x[i]) for n values (kNone: unchanged).
void apply_activation(float* x, Activation act, int64_t n);
// grad[i] *= act'(pre[i]) for n values: the gradient of the pre-activation from the output's.
void activation_backward(float* grad, const float* pre, Activation act, int64_t n);

// Small-M GEMM for the fp32-panel path (decoding): out[m * ldo + j] = dot(a[m * K : (m+1) * K], w_j)
// for j in [0, n), w_j = the j-th row of w (16-bit `w_type`, row stride ldw, K contiguous values),
// i.e. a @ w.T with w in nn.Linear's (N, K) layout. Each w row is converted once into `buf`
// (K floats, the caller's) and reused for every row of a, so w is read once, in 16 bits.
void small_m_gemm(const float* a, int64_t M, int64_t K, const void* w, int w_type, int64_t ldw, int64_t n, float* out,
                  int64_t ldo, float* buf);

}  // namespace fastlm::cpu
