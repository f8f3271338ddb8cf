// Torch glue and kernel for fastlm::watermark_bias (schema in fastlm/ops/schemas.py): logits (B, V)
// float32/bfloat16/float16, seeds (B,) and codes (V,) int64 in [0, 2^32). out[b, v] = logits[b, v] +
// delta where lowbias32(seeds[b] ^ codes[v]) < threshold, fp32 math, rounded once to logits' dtype.
// One pass over the logits instead of the reference's dozen elementwise ops.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu/vectorize.h"

namespace fastlm::cpu {
namespace {

// Wellons' lowbias32: the same words as fastlm/ops/reference_watermark.py's mix32 (uint32 wraps).
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x21F0AAADu;
  x ^= x >> 15;
  x *= 0x735A2D97u;
  x ^= x >> 15;
  return x;
}

// One row: branch-free, so the loop vectorizes (uint32 multiplies, a select).
template <typename T>
void bias_row(const T* row, T* dst, int64_t V, uint32_t seed, const int64_t* codes, uint64_t thr, float d) {
#pragma omp simd
  for (int64_t v = 0; v < V; ++v) {
    const uint32_t h = mix32(seed ^ static_cast<uint32_t>(codes[v]));
    const float bias = static_cast<uint64_t>(h) < thr ? d : 0.0f;
    dst[v] = static_cast<T>(static_cast<float>(row[v]) + bias);
  }
}

// fp32 (what generation samples from), compiled for AVX-512 / AVX2 / baseline and chosen at load time:
// the baseline ISA has no 32-bit vector multiply, so without the clones the loop stays scalar.
FASTLM_MULTIVERSION
void bias_row_f32(const float* row, float* dst, int64_t V, uint32_t seed, const int64_t* codes, uint64_t thr,
                  float d) {
  bias_row<float>(row, dst, V, seed, codes, thr, d);
}

template <typename T>
void bias_row_any(const T* row, T* dst, int64_t V, uint32_t seed, const int64_t* codes, uint64_t thr, float d) {
  if constexpr (std::is_same_v<T, float>) {
    bias_row_f32(row, dst, V, seed, codes, thr, d);
  } else {
    bias_row<T>(row, dst, V, seed, codes, thr, d);
  }
}

at::Tensor watermark_bias(const at::Tensor& logits_in, const at::Tensor& seeds_in, const at::Tensor& codes_in,
                          int64_t threshold, double delta) {
  constexpr const char* op = "fastlm::watermark_bias";
  TORCH_CHECK(logits_in.dim() == 2, op, ": logits must be (batch, vocab), got ", logits_in.sizes());
  const auto dt = logits_in.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
              ": logits must be float32, bfloat16 or float16, got ", dt);
  const int64_t B = logits_in.size(0), V = logits_in.size(1);
  TORCH_CHECK(seeds_in.scalar_type() == at::kLong && seeds_in.dim() == 1 && seeds_in.size(0) == B, op,
              ": seeds must be int64 of shape (", B, "), got ", seeds_in.scalar_type(), " ", seeds_in.sizes());
  TORCH_CHECK(codes_in.scalar_type() == at::kLong && codes_in.dim() == 1 && codes_in.size(0) == V, op,
              ": codes must be int64 of shape (", V, "), got ", codes_in.scalar_type(), " ", codes_in.sizes());
  TORCH_CHECK(threshold >= 0 && threshold <= (int64_t(1) << 32), op, ": threshold must be in [0, 2^32], got ",
              threshold);
  const at::Tensor logits = logits_in.contiguous(), seeds = seeds_in.contiguous(), codes = codes_in.contiguous();
  at::Tensor out = at::empty_like(logits);
  const int64_t* sp = seeds.data_ptr<int64_t>();
  const int64_t* cp = codes.data_ptr<int64_t>();
  const uint64_t thr = static_cast<uint64_t>(threshold);
  const float d = static_cast<float>(delta);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "fastlm_watermark_bias", [&] {
    const scalar_t* lp = logits.data_ptr<scalar_t>();
    scalar_t* outp = out.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, V));
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const uint32_t seed = static_cast<uint32_t>(sp[b]);
        const scalar_t* row = lp + b * V;
        scalar_t* dst = outp + b * V;
        bias_row_any(row, dst, V, seed, cp, thr, d);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlm, CPU, m) {
  m.impl("watermark_bias", &watermark_bias);
}

}  // namespace fastlm::cpu
