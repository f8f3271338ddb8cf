// Row loads/stores between fp32/bf16/fp16 tensors and fp32 buffers, for torch glue files whose
// kernels work on fp32 rows (norms.cpp, rope.cpp, gated_act.cpp, cross_entropy.cpp). fp32 rows are used
// in place.
#pragma once
#include <ATen/ATen.h>

#include "cpu/norm_rows.h"

#define FASTLM_DISPATCH_FLOATS(TYPE, NAME, ...)                            \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

namespace fastlm::cpu::rows {

inline const float* load(const float* src, float*, int64_t) { return src; }
inline const float* load(const at::BFloat16* src, float* buf, int64_t n) {
  bf16_to_float(reinterpret_cast<const uint16_t*>(src), buf, n);
  return buf;
}
inline const float* load(const at::Half* src, float* buf, int64_t n) {
  for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(src[i]);
  return buf;
}
// Where a kernel writes its fp32 result: straight into an fp32 destination, else into buf.
inline float* out(float* dst, float*) { return dst; }
template <typename T>
inline float* out(T*, float* buf) { return buf; }
inline void store(const float*, float*, int64_t) {}
inline void store(const float* buf, at::BFloat16* dst, int64_t n) {
  float_to_bf16(buf, reinterpret_cast<uint16_t*>(dst), n);
}
inline void store(const float* buf, at::Half* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<at::Half>(buf[i]);
}

inline void check_float_dtype(const at::Tensor& t, const char* op, const char* name) {
  const auto d = t.scalar_type();
  TORCH_CHECK(d == at::kFloat || d == at::kBFloat16 || d == at::kHalf, op, ": ", name,
              " must be float32, bfloat16 or float16, got ", d);
}

}  // namespace fastlm::cpu::rows
