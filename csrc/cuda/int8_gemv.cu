// Weight-only int8 GEMV (decoding, m <= 8): one warp per output column streams that weight row once
// in 16-byte loads, dequantizes in registers (int8 * its group's scale, fp32) and accumulates all m
// rows of x at once; a warp shuffle reduction finishes each column. Memory-bound on the weights,
// which this reads at 1 byte per element (half of fp16).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda/int8_gemv.h"

namespace fastlm::cuda {
namespace {

constexpr int kWarps = 4;  // columns per block
constexpr int kVec = 16;   // int8 weights per lane and step (one 16-byte load)

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// kVector: k and group_size are multiples of 16 and weight rows 16-byte aligned.
template <typename T, int M, bool kVector>
__global__ void __launch_bounds__(kWarps * 32) int8_gemv_kernel(const T* __restrict__ x, int64_t ldx,
                                                                 const int8_t* __restrict__ w, int64_t ldw,
                                                                 const float* __restrict__ scale, int64_t group_size,
                                                                 const float* __restrict__ bias, T* __restrict__ out,
                                                                 int64_t ldo, int64_t n, int64_t k) {
  const int lane = threadIdx.x % 32;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (col >= n) return;
  const int8_t* wr = w + col * ldw;
  const float* sr = scale + col * (k / group_size);
  float acc[M];
#pragma unroll
  for (int r = 0; r < M; ++r) acc[r] = 0.f;
  if (kVector) {
    for (int64_t k0 = static_cast<int64_t>(lane) * kVec; k0 < k; k0 += 32 * kVec) {
      const int4 packed = __ldg(reinterpret_cast<const int4*>(wr + k0));
      const int8_t* bytes = reinterpret_cast<const int8_t*>(&packed);
      const float s = __ldg(sr + k0 / group_size);
      float wf[kVec];
#pragma unroll
      for (int i = 0; i < kVec; ++i) wf[i] = static_cast<float>(bytes[i]) * s;
#pragma unroll
      for (int r = 0; r < M; ++r) {
        const T* xr = x + r * ldx + k0;
#pragma unroll
        for (int i = 0; i < kVec; ++i) acc[r] += to_float(xr[i]) * wf[i];
      }
    }
  } else {
    for (int64_t kk = lane; kk < k; kk += 32) {
      const float wv = static_cast<float>(wr[kk]) * sr[kk / group_size];
#pragma unroll
      for (int r = 0; r < M; ++r) acc[r] += to_float(x[r * ldx + kk]) * wv;
    }
  }
#pragma unroll
  for (int r = 0; r < M; ++r) {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], offset);
  }
  if (lane == 0) {
    const float b = bias ? bias[col] : 0.f;
#pragma unroll
    for (int r = 0; r < M; ++r) out[r * ldo + col] = from_float<T>(acc[r] + b);
  }
}

template <typename T, int M>
void launch(const void* x, int64_t ldx, const int8_t* w, int64_t ldw, const float* scale, int64_t group_size,
            const float* bias, void* out, int64_t ldo, int64_t n, int64_t k, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((n + kWarps - 1) / kWarps)), block(kWarps * 32);
  const bool vector = k % kVec == 0 && group_size % kVec == 0 && ldw % kVec == 0 &&
                      reinterpret_cast<uintptr_t>(w) % 16 == 0;
  const T* xt = static_cast<const T*>(x);
  T* ot = static_cast<T*>(out);
  if (vector) {
    int8_gemv_kernel<T, M, true><<<grid, block, 0, stream>>>(xt, ldx, w, ldw, scale, group_size, bias, ot, ldo, n, k);
  } else {
    int8_gemv_kernel<T, M, false><<<grid, block, 0, stream>>>(xt, ldx, w, ldw, scale, group_size, bias, ot, ldo, n, k);
  }
}

template <typename T>
cudaError_t dispatch_rows(int m, const void* x, int64_t ldx, const int8_t* w, int64_t ldw, const float* scale,
                          int64_t group_size, const float* bias, void* out, int64_t ldo, int64_t n, int64_t k,
                          cudaStream_t stream) {
  switch (m) {
#define FASTLM_GEMV_ROWS(M) \
  case M: launch<T, M>(x, ldx, w, ldw, scale, group_size, bias, out, ldo, n, k, stream); break;
    FASTLM_GEMV_ROWS(1)
    FASTLM_GEMV_ROWS(2)
    FASTLM_GEMV_ROWS(3)
    FASTLM_GEMV_ROWS(4)
    FASTLM_GEMV_ROWS(5)
    FASTLM_GEMV_ROWS(6)
    FASTLM_GEMV_ROWS(7)
    FASTLM_GEMV_ROWS(8)
#undef FASTLM_GEMV_ROWS
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t int8_gemv(const void* x, int64_t ldx, GemvType type, const int8_t* w, int64_t ldw, const float* scale,
                      int64_t group_size, const float* bias, void* out, int64_t ldo, int m, int64_t n, int64_t k,
                      cudaStream_t stream) {
  if (m < 1 || m > kInt8GemvMaxRows || group_size <= 0 || k % group_size != 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  switch (type) {
    case GemvType::kFloat32:
      return dispatch_rows<float>(m, x, ldx, w, ldw, scale, group_size, bias, out, ldo, n, k, stream);
    case GemvType::kBFloat16:
      return dispatch_rows<__nv_bfloat16>(m, x, ldx, w, ldw, scale, group_size, bias, out, ldo, n, k, stream);
    case GemvType::kFloat16:
      return dispatch_rows<__half>(m, x, ldx, w, ldw, scale, group_size, bias, out, ldo, n, k, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastlm::cuda
