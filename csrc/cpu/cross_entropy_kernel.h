// Cross-entropy of one row of logits on fp32 buffers (torch-free), with label smoothing e and
// z-loss weight z:  loss = lse - (1 - e) x[label] - e mean(x) + z lse^2,  lse = logsumexp(x).
#pragma once
#include <cstdint>

namespace fastlm::cpu {

// Returns the loss; writes lse.
float cross_entropy_row_fwd(const float* x, int64_t v, int64_t label, float smoothing, float z_loss, float* lse);
// dx = g * (softmax(x) (1 + 2 z lse) - e / v - (1 - e) onehot(label)).
void cross_entropy_row_bwd(const float* x, int64_t v, int64_t label, float lse, float g, float smoothing,
                           float z_loss, float* dx);
// The backward on a bf16 row (the logits of a bf16 LM head), converted in registers (fp32 math, dx
// rounded once): one pass over the row instead of conversion passes through fp32 buffers (~10 % faster
// at V = 8192; the forward's reductions vectorize worse that way, so it keeps the fp32 buffer).
void cross_entropy_row_bwd(const uint16_t* x, int64_t v, int64_t label, float lse, float g, float smoothing,
                           float z_loss, uint16_t* dx);

}  // namespace fastlm::cpu
