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

}  // namespace fastlm::cpu
