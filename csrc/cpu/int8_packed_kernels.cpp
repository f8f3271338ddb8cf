// W8A8 with the weight packed once (AVX-512 VNNI, AVX-VNNI): out = a @ w^T from w (N, K) int8 stored as blocks
// of 16 output columns, [block][k / 4][16 columns][4 k values], zero-padded, then the int32 column sums.
//
// One 64-byte load then holds 16 columns x 4 k values, so vpdpbusd multiplies it by 4 bytes of a row
// broadcast to every lane: 16 outputs a vector, no horizontal sums, one weight stream per thread.
// vpdpbusd takes unsigned x signed bytes: a is flipped to unsigned once per call (a ^ 0x80 = a + 128)
// and 128 * colsum(w) (stored with the packing) is subtracted in the epilogue: exact for all int8 values.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/int8_kernels.h"
#include "cpu/int8_vnni_asm.h"

namespace fastlm::cpu {
namespace {

constexpr int64_t kBlock = 16;  // output columns per packed block (one zmm of int32)
constexpr int kMaxRows = 4;     // register tile: 4 rows x 4 blocks = 16 accumulators + 4 weights + 1 broadcast
                                // (GCC spills 6 x 4 to the stack)
constexpr int kMaxBlocks = 4;

int64_t padded_k(int64_t k) { return (k + 3) / 4 * 4; }
int64_t blocks(int64_t n) { return (n + kBlock - 1) / kBlock; }
// Blocks of w and rows of a one cache line more than a multiple of 64 bytes * K apart: at power-of-two
// K the streams a tile reads would otherwise all map to the same L1 set (4k aliasing) and evict each other.
constexpr int64_t kSkew = 64;
int64_t block_stride(int64_t k) { return kBlock * padded_k(k) + kSkew; }

template <int MR, int NB>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void tile(const Int8PackedGemmArgs& g, int64_t m0, int64_t b0) {
  __m512i acc[MR][NB];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_si512();
  const int64_t kq = padded_k(g.k) / 4;
  const int64_t block_bytes = block_stride(g.k);
  const int8_t* w = g.packed + b0 * block_bytes;
  const uint8_t* a = g.a_u8 + m0 * g.lda;
  for (int64_t q = 0; q < kq; ++q) {
    __m512i wv[NB];
    for (int j = 0; j < NB; ++j) {
      const int8_t* src = w + j * block_bytes + q * 64;
      _mm_prefetch(reinterpret_cast<const char*>(src + 512), _MM_HINT_T0);
      wv[j] = _mm512_loadu_si512(src);
    }
    for (int i = 0; i < MR; ++i) {
      int32_t four;
      std::memcpy(&four, a + i * g.lda + q * 4, 4);
      const __m512i av = _mm512_set1_epi32(four);
      for (int j = 0; j < NB; ++j) acc[i][j] = dpbusd(acc[i][j], av, wv[j]);
    }
  }
  const int32_t* colsum = reinterpret_cast<const int32_t*>(g.packed + blocks(g.n) * block_bytes);
  for (int j = 0; j < NB; ++j) {
    const int64_t n0 = (b0 + j) * kBlock;
    const __mmask16 mask = g.n - n0 >= kBlock ? __mmask16(0xffff) : __mmask16((1u << (g.n - n0)) - 1);
    const __m512i offset = _mm512_slli_epi32(_mm512_loadu_si512(colsum + n0), 7);  // 128 * colsum
    __m512 bs, bias;
    if (g.a_scale != nullptr) {
      bs = _mm512_maskz_loadu_ps(mask, g.b_scale + n0);
      bias = g.bias ? _mm512_maskz_loadu_ps(mask, g.bias + n0) : _mm512_setzero_ps();
    }
    for (int i = 0; i < MR; ++i) {
      const int64_t m = m0 + i;
      const __m512i sums = _mm512_sub_epi32(acc[i][j], offset);
      if (g.a_scale == nullptr) {
        _mm512_mask_storeu_epi32(static_cast<int32_t*>(g.out) + m * g.ldo + n0, mask, sums);
        continue;
      }
      // fma(acc * a_scale, b_scale, bias): int8_gemm's epilogue, so both give the same bits.
      const __m512 scaled = _mm512_mul_ps(_mm512_cvtepi32_ps(sums), _mm512_set1_ps(g.a_scale[m]));
      _mm512_mask_storeu_ps(static_cast<float*>(g.out) + m * g.ldo + n0, mask, _mm512_fmadd_ps(scaled, bs, bias));
    }
  }
}

using TileFn = void (*)(const Int8PackedGemmArgs&, int64_t, int64_t);
#define FASTLM_PACKED_ROW(MR) {&tile<MR, 1>, &tile<MR, 2>, &tile<MR, 3>, &tile<MR, 4>}
const TileFn kTiles[kMaxRows][kMaxBlocks] = {FASTLM_PACKED_ROW(1), FASTLM_PACKED_ROW(2), FASTLM_PACKED_ROW(3),
                                             FASTLM_PACKED_ROW(4)};

// AVX-VNNI (256-bit): a block row is two ymm (columns 0-7, 8-15); 2 rows x 2 blocks = 8 accumulators,
// 4 weights and a broadcast in the 16 ymm registers VEX can encode.
constexpr int kVexRows = 2;
constexpr int kVexBlocks = 2;

template <int MR, int NB>
__attribute__((target("avx2,avxvnni"))) void tile_vex(const Int8PackedGemmArgs& g, int64_t m0, int64_t b0) {
  __m256i acc[MR][2 * NB];
  for (int i = 0; i < MR; ++i)
    for (int c = 0; c < 2 * NB; ++c) acc[i][c] = _mm256_setzero_si256();
  const int64_t kq = padded_k(g.k) / 4;
  const int64_t block_bytes = block_stride(g.k);
  const int8_t* w = g.packed + b0 * block_bytes;
  const uint8_t* a = g.a_u8 + m0 * g.lda;
  for (int64_t q = 0; q < kq; ++q) {
    __m256i wv[2 * NB];
    for (int j = 0; j < NB; ++j) {
      const int8_t* src = w + j * block_bytes + q * 64;
      _mm_prefetch(reinterpret_cast<const char*>(src + 512), _MM_HINT_T0);
      wv[2 * j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
      wv[2 * j + 1] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32));
    }
    for (int i = 0; i < MR; ++i) {
      int32_t four;
      std::memcpy(&four, a + i * g.lda + q * 4, 4);
      const __m256i av = _mm256_set1_epi32(four);
      for (int c = 0; c < 2 * NB; ++c) acc[i][c] = dpbusd_vex(acc[i][c], av, wv[c]);
    }
  }
  // Scalar epilogue (AVX2 has no masked stores for the n tail), the same arithmetic as int8_gemm's.
  const int32_t* colsum = reinterpret_cast<const int32_t*>(g.packed + blocks(g.n) * block_bytes);
  for (int j = 0; j < NB; ++j) {
    const int64_t n0 = (b0 + j) * kBlock;
    const int64_t cols = std::min(kBlock, g.n - n0);
    for (int i = 0; i < MR; ++i) {
      alignas(32) int32_t sums[kBlock];
      _mm256_store_si256(reinterpret_cast<__m256i*>(sums), acc[i][2 * j]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(sums + 8), acc[i][2 * j + 1]);
      const int64_t m = m0 + i;
      for (int64_t c = 0; c < cols; ++c) {
        const int32_t s = sums[c] - 128 * colsum[n0 + c];
        if (g.a_scale == nullptr) {
          static_cast<int32_t*>(g.out)[m * g.ldo + n0 + c] = s;
          continue;
        }
        const float v = static_cast<float>(s) * g.a_scale[m];
        static_cast<float*>(g.out)[m * g.ldo + n0 + c] =
            g.bias ? std::fma(v, g.b_scale[n0 + c], g.bias[n0 + c]) : v * g.b_scale[n0 + c];
      }
    }
  }
}

const TileFn kVexTiles[kVexRows][kVexBlocks] = {{&tile_vex<1, 1>, &tile_vex<1, 2>}, {&tile_vex<2, 1>, &tile_vex<2, 2>}};

// W8A16 from the same packed weight, for a few rows of fp32 x (decoding): one weight stream per thread (the
// unpacked kernels read 4 weight rows at once). A 64-byte line (16 columns x 4 k) is 4 zmm of int32 -> fp32
// (4 columns x 4 k each) times x[4q .. 4q + 3] repeated 4 times; the 4 k phases of each column are summed at
// the end. fp32 products of exact int8 weights, fp32 sums; the per-channel scale and the bias at the end.
// One 64-byte line (k quad q) into the MR x 4 accumulators. TAIL: the last, partial quad (x loads masked).
template <int MR, bool TAIL>
__attribute__((target("avx512f,avx512vl"), always_inline)) inline void gemv_quad(__m512 (&acc)[MR][4],
                                                                                const Int8PackedGemvArgs& g,
                                                                                const int8_t* line, int64_t q) {
  if (!TAIL) _mm_prefetch(reinterpret_cast<const char*>(line + 4096), _MM_HINT_T0);  // 64 lines: DRAM latency
  __m512 wv[4];
  for (int t = 0; t < 4; ++t) {
    wv[t] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(line + 16 * t))));
  }
  for (int i = 0; i < MR; ++i) {
    const float* x = g.x + i * g.ldx + 4 * q;
    const __m128 x4 = TAIL ? _mm_maskz_loadu_ps(static_cast<__mmask8>((1u << (g.k - 4 * q)) - 1), x) : _mm_loadu_ps(x);
    const __m512 xv = _mm512_broadcast_f32x4(x4);
    for (int t = 0; t < 4; ++t) acc[i][t] = _mm512_fmadd_ps(wv[t], xv, acc[i][t]);
  }
}

template <int MR>
__attribute__((target("avx512f,avx512vl"))) void gemv_tile(const Int8PackedGemvArgs& g, int64_t b) {
  __m512 acc[MR][4];
  for (int i = 0; i < MR; ++i)
    for (int t = 0; t < 4; ++t) acc[i][t] = _mm512_setzero_ps();
  const int64_t full = g.k / 4;
  const int8_t* w = g.packed + b * block_stride(g.k);
  for (int64_t q = 0; q < full; ++q) gemv_quad<MR, false>(acc, g, w + q * 64, q);
  if (g.k % 4 != 0) gemv_quad<MR, true>(acc, g, w + full * 64, full);
  const int64_t n0 = b * kBlock, cols = std::min(kBlock, g.n - n0);
  for (int i = 0; i < MR; ++i) {
    alignas(64) float lanes[64];
    for (int t = 0; t < 4; ++t) _mm512_store_ps(lanes + 16 * t, acc[i][t]);
    float* out = g.out + i * g.ldo + n0;
    for (int64_t c = 0; c < cols; ++c) {  // lanes[4c .. 4c + 3]: column c's 4 k phases
      const float sum = (lanes[4 * c] + lanes[4 * c + 1]) + (lanes[4 * c + 2] + lanes[4 * c + 3]);
      out[c] = sum * g.w_scale[n0 + c] + (g.bias ? g.bias[n0 + c] : 0.f);
    }
  }
}

}  // namespace

int64_t int8_packed_weight_bytes(int64_t n, int64_t k) {
  return blocks(n) * block_stride(k) + blocks(n) * kBlock * 4;
}

int64_t int8_packed_a_stride(int64_t k) { return padded_k(k) + kSkew; }

void int8_pack_weight(const int8_t* w, int64_t ldw, int64_t n, int64_t k, int8_t* packed) {
  const int64_t nb = blocks(n);
  std::memset(packed, 0, static_cast<size_t>(int8_packed_weight_bytes(n, k)));
  int32_t* colsum = reinterpret_cast<int32_t*>(packed + nb * block_stride(k));
  for (int64_t c = 0; c < n; ++c) {
    int8_t* block = packed + (c / kBlock) * block_stride(k) + (c % kBlock) * 4;
    int32_t sum = 0;
    for (int64_t p = 0; p < k; ++p) {
      block[(p / 4) * kBlock * 4 + p % 4] = w[c * ldw + p];
      sum += w[c * ldw + p];
    }
    colsum[c] = sum;
  }
}

void int8_flip_rows(const int8_t* a, int64_t lda, int64_t m, int64_t k, uint8_t* a_u8) {
  const int64_t kp = padded_k(k), stride = int8_packed_a_stride(k);
  for (int64_t r = 0; r < m; ++r) {
    uint8_t* dst = a_u8 + r * stride;
    for (int64_t p = 0; p < k; ++p) dst[p] = static_cast<uint8_t>(a[r * lda + p]) ^ 0x80u;
    for (int64_t p = k; p < kp; ++p) dst[p] = 0;  // meets zero weights
  }
}

bool int8_packed_gemv_supported() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
  return ok;
#else
  return false;
#endif
}

void int8_packed_gemv(const Int8PackedGemvArgs& g, int64_t b0, int64_t b1) {
  using Fn = void (*)(const Int8PackedGemvArgs&, int64_t);
  static constexpr Fn kRows[kMaxGemvRows] = {&gemv_tile<1>, &gemv_tile<2>, &gemv_tile<3>, &gemv_tile<4>};
  for (int64_t b = b0; b < b1; ++b) kRows[g.m - 1](g, b);
}

bool int8_packed_path_supported(Int8Path path) {
  return (path == Int8Path::kAvx512Vnni || path == Int8Path::kAvxVnni) && int8_path_supported(path);
}

void int8_packed_gemm(Int8Path path, const Int8PackedGemmArgs& g, int64_t b0, int64_t b1) {
  const bool vex = path == Int8Path::kAvxVnni;
  const int max_rows = vex ? kVexRows : kMaxRows, max_blocks = vex ? kVexBlocks : kMaxBlocks;
  for (int64_t bb = b0; bb < b1; bb += max_blocks) {
    const int nb = static_cast<int>(std::min<int64_t>(max_blocks, b1 - bb));
    for (int64_t m0 = 0; m0 < g.m; m0 += max_rows) {
      const int mr = static_cast<int>(std::min<int64_t>(max_rows, g.m - m0));
      if (vex) {
        kVexTiles[mr - 1][nb - 1](g, m0, bb);
      } else {
        kTiles[mr - 1][nb - 1](g, m0, bb);
      }
    }
  }
}

}  // namespace fastlm::cpu
