// Row kernels of RMSNorm and LayerNorm on fp32 buffers (torch-free). The torch glue in
// norms.cpp converts bf16/fp16 rows to fp32 and back, and spreads rows over threads.
#pragma once
#include <cstdint>

namespace fastlm::cpu {

// bf16 <-> fp32 (bf16 is the top half of an fp32; rounding to nearest even on the way back).
void bf16_to_float(const uint16_t* src, float* dst, int64_t n);
void float_to_bf16(const float* src, uint16_t* dst, int64_t n);

// y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps). Returns rstd.
float rms_norm_row_fwd(const float* x, const float* w, float eps, int64_t n, float* y);
// dx = rstd * (g*w - xhat * mean(g*w*xhat)), xhat = x*rstd; dw_acc += g * xhat.
void rms_norm_row_bwd(const float* g, const float* x, const float* w, float rstd, int64_t n, float* dx, float* dw_acc);

// y = (x - mean) * rstd * w + b. Writes mean and rstd.
void layer_norm_row_fwd(const float* x, const float* w, const float* b, float eps, int64_t n, float* y, float* mean,
                        float* rstd);
// dx = rstd * (g*w - xhat * mean(g*w*xhat) - mean(g*w)); dw_acc += g * xhat; db_acc += g.
void layer_norm_row_bwd(const float* g, const float* x, const float* w, float mean, float rstd, int64_t n, float* dx,
                        float* dw_acc, float* db_acc);

// acc += src (for summing per-thread weight-gradient partials).
void add_into(const float* src, float* acc, int64_t n);

}  // namespace fastlm::cpu
