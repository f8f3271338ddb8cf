// bf16 FlashAttention-2 CPU kernels with AVX512-BF16 products (see attention_bf16_kernel.h). Every
// function that runs vector code is compiled for AVX-512 + AVX512-BF16 only (kTarget); the glue calls
// them only when bf16::supported().
#include "cpu/attention_bf16_kernel.h"

// GCC 12's AVX-512 headers (_mm512_reduce_*, masked loads) trip -Wuninitialized false positives.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/attention_common.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define FASTLM_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

namespace fastlm::cpu::attn::bf16 {
namespace {

static_assert(kBlockK == 64 && kBlockQ == 64, "the tiles below are written for 64 = 4 x 16 lanes");

// C[MR x 16 NV] (+)= alpha (A[MR x 2 KP] B): A bf16 rows (lda elements apart), B pair rows (uint32
// [KP][ldb]); alpha scales the fp32 product (the softmax scale: rounds as scaling S afterwards would).
// Accumulators in registers (6 x 4 + 4 B vectors + 1 broadcast of the 32 zmm); with add, the block
// product is summed from zero and then added to C (see kFold).
template <int MR, int NV>
FASTLM_BF16_TARGET __attribute__((always_inline)) inline void tile(int64_t KP, const uint16_t* __restrict__ A,
                                                                   int64_t lda, const uint32_t* __restrict__ B,
                                                                   int64_t ldb, float* __restrict__ C, int64_t ldc,
                                                                   bool add, float alpha) {
  __m512 c[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[i][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < KP; ++k) {
    __m512i bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_si512(B + k * ldb + 16 * v);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      uint32_t pair;
      std::memcpy(&pair, A + i * lda + 2 * k, sizeof(pair));
      const __m512i a = _mm512_set1_epi32(static_cast<int>(pair));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[i][v] = _mm512_dpbf16_ps(c[i][v], (__m512bh)a, (__m512bh)bv[v]);
    }
  }
  if (alpha != 1.f) {
    const __m512 a = _mm512_set1_ps(alpha);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[i][v] = _mm512_mul_ps(c[i][v], a);
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* dst = C + i * ldc + 16 * v;
      _mm512_storeu_ps(dst, add ? _mm512_add_ps(_mm512_loadu_ps(dst), c[i][v]) : c[i][v]);
    }
}

template <int MR>
FASTLM_BF16_TARGET __attribute__((always_inline)) inline void tile_rows(int64_t N, int64_t KP, const uint16_t* A,
                                                                        int64_t lda, const uint32_t* B, int64_t ldb,
                                                                        float* C, int64_t ldc, bool add, float alpha) {
  int64_t n = 0;
  for (; n + 64 <= N; n += 64) tile<MR, 4>(KP, A, lda, B + n, ldb, C + n, ldc, add, alpha);
  switch (N - n) {
    case 48: tile<MR, 3>(KP, A, lda, B + n, ldb, C + n, ldc, add, alpha); break;
    case 32: tile<MR, 2>(KP, A, lda, B + n, ldb, C + n, ldc, add, alpha); break;
    case 16: tile<MR, 1>(KP, A, lda, B + n, ldb, C + n, ldc, add, alpha); break;
    default: break;
  }
}

// C[M x N] (+)= alpha (A[M x 2 KP] B) (N a multiple of 16, any M).
FASTLM_BF16_TARGET void gemm(int64_t M, int64_t N, int64_t KP, const uint16_t* A, int64_t lda, const uint32_t* B,
                             int64_t ldb, float* C, int64_t ldc, bool add, float alpha) {
  int64_t m = 0;
  for (; m + 6 <= M; m += 6) tile_rows<6>(N, KP, A + m * lda, lda, B, ldb, C + m * ldc, ldc, add, alpha);
  const uint16_t* a = A + m * lda;
  float* c = C + m * ldc;
  switch (M - m) {
    case 5: tile_rows<5>(N, KP, a, lda, B, ldb, c, ldc, add, alpha); break;
    case 4: tile_rows<4>(N, KP, a, lda, B, ldb, c, ldc, add, alpha); break;
    case 3: tile_rows<3>(N, KP, a, lda, B, ldb, c, ldc, add, alpha); break;
    case 2: tile_rows<2>(N, KP, a, lda, B, ldb, c, ldc, add, alpha); break;
    case 1: tile_rows<1>(N, KP, a, lda, B, ldb, c, ldc, add, alpha); break;
    default: break;
  }
}

// 16 lanes of two fp32 rows as bf16 pairs (lo, hi) in 32-bit words, rounded to nearest even.
FASTLM_BF16_TARGET __attribute__((always_inline)) inline __m512i pair16(__m512 lo, __m512 hi) {
  const __m512i l = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(lo));
  const __m512i h = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(hi));
  return _mm512_or_si512(l, _mm512_slli_epi32(h, 16));
}

// Pair rows of `rows` fp32 rows (64 lanes, ld 64): dst[r / 2][n] = (src[r][n], src[r + 1][n]); a
// missing last odd row counts as zeros.
FASTLM_BF16_TARGET void pair_rows(const float* src, int64_t rows, uint32_t* dst) {
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t r = 0; r < rows; r += 2) {
    const float* lo = src + r * 64;
    const float* hi = lo + 64;
    uint32_t* d = dst + r / 2 * 64;
    for (int v = 0; v < 4; ++v) {
      const __m512 h = r + 1 < rows ? _mm512_loadu_ps(hi + 16 * v) : zero;
      _mm512_storeu_si512(d + 16 * v, pair16(_mm512_loadu_ps(lo + 16 * v), h));
    }
  }
}

// The first `lanes` lanes of `rows` transposed rows (ld 64) times the per-lane factors f.
FASTLM_BF16_TARGET void scale_lanes(float* x, int64_t rows, int64_t lanes, const float* f) {
  for (int64_t j = 0; j < lanes; j += 16) {
    const __m512 s = _mm512_loadu_ps(f + j);
    for (int64_t r = 0; r < rows; ++r) _mm512_storeu_ps(x + r * 64 + j, _mm512_mul_ps(_mm512_loadu_ps(x + r * 64 + j), s));
  }
}

FASTLM_BF16_TARGET void add_into(float* dst, const float* src, int64_t n) {
  for (int64_t j = 0; j < n; j += 16) _mm512_storeu_ps(dst + j, _mm512_add_ps(_mm512_loadu_ps(dst + j), _mm512_loadu_ps(src + j)));
}

// The compiled instance of softmax_lanes (attention_common.h).
FASTLM_BF16_TARGET void softmax_block(float* st, int64_t keys, int64_t lanes, float* m, float* corr, float* bsum) {
  softmax_lanes(st, keys, lanes, m, corr, bsum);
}

// P = exp(S - lse) on rows [0, mr) of a score tile; rows past `rows` or that see no key are zero.
FASTLM_BF16_TARGET void exp_rows(float* s, int64_t rows, int64_t mr, const float* lse) {
  for (int64_t r = 0; r < mr; ++r) {
    float* sr = s + r * kBlockK;
    const bool none = r >= rows || lse[r] == kNegInf;
    const vec16 x = splat16(none ? 0.f : lse[r]);
    for (int64_t j = 0; j < kBlockK; j += 16) store16(sr + j, none ? vec16{} : exp16(load16(sr + j) - x));
  }
}

// dS = P * (dP - delta) on rows [0, mr) (mr even), in one pass written twice in bf16: as pair rows
// (dst[r / 2][j] = (dS[r][j], dS[r + 1][j])) and as plain rows.
FASTLM_BF16_TARGET void ds_rows(const float* p, const float* dp, int64_t mr, const float* delta, uint32_t* pairs,
                                uint16_t* rows) {
  for (int64_t r = 0; r < mr; r += 2) {
    const __m512 d0 = _mm512_set1_ps(delta[r]), d1 = _mm512_set1_ps(delta[r + 1]);
    for (int64_t j = 0; j < kBlockK; j += 16) {
      const int64_t i = r * kBlockK + j;
      const __m512 lo = _mm512_mul_ps(_mm512_loadu_ps(p + i), _mm512_sub_ps(_mm512_loadu_ps(dp + i), d0));
      const __m512 hi = _mm512_mul_ps(_mm512_loadu_ps(p + i + kBlockK),
                                      _mm512_sub_ps(_mm512_loadu_ps(dp + i + kBlockK), d1));
      const __m256i lo16 = (__m256i)_mm512_cvtneps_pbh(lo), hi16 = (__m256i)_mm512_cvtneps_pbh(hi);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(rows + i), lo16);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(rows + i + kBlockK), hi16);
      const __m512i pair = _mm512_or_si512(_mm512_cvtepu16_epi32(lo16), _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi16), 16));
      _mm512_storeu_si512(pairs + r / 2 * kBlockK + j, pair);
    }
  }
}

// ---------------------------------------------------------------- rows in and out of tensors

// The first n (clamped to 0..16 / 0..32) lanes.
inline __mmask16 lanes16(int64_t n) { return n >= 16 ? 0xFFFF : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1); }
inline __mmask32 lanes32(int64_t n) { return n >= 32 ? 0xFFFFFFFFu : n <= 0 ? 0 : (1u << n) - 1; }

// 16 bf16 as fp32.
FASTLM_BF16_TARGET __attribute__((always_inline)) inline __m512 widen(__m256i x) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(x), 16));
}

// In-register transpose of a 16 x 16 fp32 (or 32-bit) tile: x[i] = row i -> x[j] = column j.
FASTLM_BF16_TARGET __attribute__((always_inline)) inline void transpose16x16(__m512 x[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {  // per 128-bit lane: (r0[0], r1[0], r0[1], r1[1]), (r0[2], r1[2], ...)
    t[2 * i] = _mm512_unpacklo_ps(x[2 * i], x[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(x[2 * i], x[2 * i + 1]);
  }
  for (int g = 0; g < 4; ++g) {  // x[4g + j], 128-bit lane L: rows 4g .. 4g + 3 of column 4L + j
    x[4 * g + 0] = _mm512_shuffle_ps(t[4 * g + 0], t[4 * g + 2], 0x44);
    x[4 * g + 1] = _mm512_shuffle_ps(t[4 * g + 0], t[4 * g + 2], 0xEE);
    x[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
    x[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) t[j] = x[j], t[4 + j] = x[4 + j], t[8 + j] = x[8 + j], t[12 + j] = x[12 + j];
  for (int j = 0; j < 4; ++j) {  // gather lane L of the four row groups: column 4L + j
    const __m512 x0 = _mm512_shuffle_f32x4(t[j], t[4 + j], 0x88), x1 = _mm512_shuffle_f32x4(t[j], t[4 + j], 0xDD);
    const __m512 y0 = _mm512_shuffle_f32x4(t[8 + j], t[12 + j], 0x88);
    const __m512 y1 = _mm512_shuffle_f32x4(t[8 + j], t[12 + j], 0xDD);
    x[j] = _mm512_shuffle_f32x4(x0, y0, 0x88);
    x[8 + j] = _mm512_shuffle_f32x4(x0, y0, 0xDD);
    x[4 + j] = _mm512_shuffle_f32x4(x1, y1, 0x88);
    x[12 + j] = _mm512_shuffle_f32x4(x1, y1, 0xDD);
  }
}

// dst[c][r] = src[r][c] for 32-bit values, r < rows, c < cols (rows a multiple of 16).
FASTLM_BF16_TARGET void transpose32(const uint32_t* src, int64_t lds, int64_t rows, int64_t cols, uint32_t* dst,
                                    int64_t ldd) {
  const int64_t full = cols / 16 * 16;
  for (int64_t r0 = 0; r0 < rows; r0 += 16) {
    for (int64_t c0 = 0; c0 < full; c0 += 16) {
      __m512 x[16];
      for (int i = 0; i < 16; ++i) x[i] = _mm512_loadu_ps(src + (r0 + i) * lds + c0);
      transpose16x16(x);
      for (int j = 0; j < 16; ++j) _mm512_storeu_ps(dst + (c0 + j) * ldd + r0, x[j]);
    }
    for (int64_t c = full; c < cols; ++c)
      for (int64_t r = r0; r < r0 + 16; ++r) dst[c * ldd + r] = src[r * lds + c];
  }
}

// Pair rows of bf16 rows (kBlockK x dp): dst[r / 2][c] = (src[r][c], src[r + 1][c]).
FASTLM_BF16_TARGET void pair_rows16(const uint16_t* src, int64_t dp, uint32_t* dst) {
  for (int64_t r = 0; r < kBlockK; r += 2)
    for (int64_t c = 0; c < dp; c += 16) {
      const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + r * dp + c)));
      const __m512i hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + (r + 1) * dp + c)));
      _mm512_storeu_si512(dst + r / 2 * dp + c, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
}

// (kBlockK x dp) bf16 rows -> (dp x kBlockK) bf16 rows, through pair rows (a 32-bit transpose).
FASTLM_BF16_TARGET void transpose16(const uint16_t* src, int64_t dp, uint32_t* pairs, uint16_t* dst) {
  pair_rows16(src, dp, pairs);
  transpose32(pairs, dp, kBlockK / 2, dp, reinterpret_cast<uint32_t*>(dst), kBlockK / 2);
}

// (kBlockK x dp) bf16 rows -> pair rows of their transpose: uint32 [dp / 2][kBlockK].
void transpose_pairs(const uint16_t* src, int64_t dp, uint32_t* dst) {
  transpose32(reinterpret_cast<const uint32_t*>(src), dp / 2, kBlockK, dp / 2, dst, kBlockK);
}

inline void prefetch_row(const uint16_t* row, int64_t n) {
  for (int64_t c = 0; c < n; c += 32) __builtin_prefetch(row + c);
  __builtin_prefetch(row + n - 1);
}

// rows x dp bf16 rows (zero padded to kBlockK rows) from block rows [i0, i0 + n) of a bf16 view.
FASTLM_BF16_TARGET void copy_block(const Problem& p, const View& v, const int64_t* start, int64_t b, int64_t h,
                                   int64_t i0, int64_t n, uint16_t* dst) {
  const int64_t d = p.head_dim, dp = p.dp;
  constexpr int64_t kAhead = 8;  // rows are strided (another head between two): prefetch a few rows ahead
  for (int64_t r = 0; r < n; ++r) {
    const uint16_t* src = static_cast<const uint16_t*>(v.data) + offset(v, start, b, i0 + r, h);
    if (r + kAhead < n) prefetch_row(src + kAhead * v.pos_stride, d);
    for (int64_t c = 0; c < dp; c += 32)
      _mm512_mask_storeu_epi16(dst + r * dp + c, lanes32(dp - c), _mm512_maskz_loadu_epi16(lanes32(d - c), src + c));
  }
  std::fill(dst + n * dp, dst + kBlockK * dp, uint16_t{0});
}

// Rows [0, n) of a tile kept transposed (dp x 64 lanes: lane r is row r), row r times f[r], rounded
// to bf16 into rows i0 + r of a view.
FASTLM_BF16_TARGET void store_lanes(const Problem& p, const View& v, const int64_t* start, int64_t b, int64_t h,
                                    int64_t i0, int64_t n, const float* acc_t, const float* f) {
  const int64_t d = p.head_dim;
  for (int64_t r0 = 0; r0 < n; r0 += 16) {
    for (int64_t c0 = 0; c0 < d; c0 += 16) {
      __m512 x[16];
      for (int i = 0; i < 16; ++i) x[i] = _mm512_loadu_ps(acc_t + (c0 + i) * 64 + r0);
      transpose16x16(x);
      for (int64_t j = 0; j < std::min<int64_t>(16, n - r0); ++j) {
        const __m256i y = (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(x[j], _mm512_set1_ps(f[r0 + j])));
        _mm256_mask_storeu_epi16(static_cast<uint16_t*>(v.data) + offset(v, start, b, i0 + r0 + j, h) + c0,
                                 lanes16(d - c0), y);
      }
    }
  }
}

// sum(a * b) over n bf16 values.
FASTLM_BF16_TARGET float dot(const uint16_t* a, const uint16_t* b, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 m = lanes16(n - c);
    acc = _mm512_fmadd_ps(widen(_mm256_maskz_loadu_epi16(m, a + c)), widen(_mm256_maskz_loadu_epi16(m, b + c)), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// ---------------------------------------------------------------- forward

// Query block qb of (b, h): kb_rows / vt hold the bf16 K rows and V^T of every key block of (b, g).
FASTLM_BF16_TARGET void forward_block(const Problem& p, const View& q, const uint16_t* kb_rows, const uint16_t* vt,
                                      const View& out, float* lse, int64_t b, int64_t h, int64_t qb, float* ws) {
  const int64_t dp = p.dp;
  const int64_t qlen = p.q_len[b], klen = p.k_len[b];
  const int64_t i0 = qb * kBlockQ, rows = std::min(kBlockQ, qlen - i0);
  const int64_t lanes = round_up(rows, 16);
  float* ot = ws;                      // dp x kBlockQ each: O^T sums (hi, lo: see kFold)
  float* ot_lo = ot + dp * kBlockQ;
  float* st = ot_lo + dp * kBlockQ;    // kBlockK x kBlockQ: S^T, then P^T
  auto* qp = reinterpret_cast<uint32_t*>(st + kBlockK * kBlockQ);  // dp / 2 x kBlockQ: Q^T pair rows
  auto* pp = qp + dp / 2 * kBlockQ;    // kBlockK / 2 x kBlockQ: P^T pair rows
  float* m = reinterpret_cast<float*>(pp + kBlockK / 2 * kBlockQ);  // kBlockQ each: running max, sums, ...
  float* l = m + kBlockQ;
  float* l_lo = l + kBlockQ;
  float* bsum = l_lo + kBlockQ;
  float* corr = bsum + kBlockQ;
  auto* qrows = reinterpret_cast<uint16_t*>(corr + kBlockQ);  // kBlockQ x dp bf16

  copy_block(p, q, p.q_start, b, h, i0, rows, qrows);
  transpose_pairs(qrows, dp, qp);
  const Range keys = key_range(p, i0, i0 + rows - 1, qlen, klen);
  const int64_t blocks = keys.lo <= keys.hi ? keys.hi / kBlockK - keys.lo / kBlockK + 1 : 0;
  const bool fold = blocks > kFold;
  float* o_acc = fold ? ot_lo : ot;
  float* l_acc = fold ? l_lo : l;
  std::fill(m, m + kBlockQ, kNegInf);
  std::fill(l, l + 2 * kBlockQ, 0.f);
  std::fill(ot, ot + (fold ? 2 : 1) * dp * kBlockQ, 0.f);
  int64_t folded = 0;
  for (int64_t kb = keys.lo / kBlockK; blocks > 0 && kb <= keys.hi / kBlockK; ++kb) {
    const int64_t j0 = kb * kBlockK, krows = std::min(kBlockK, klen - j0);
    // S^T = scale (K Q^T): keys in rows, queries in lanes (as the fp32 kernel).
    gemm(krows, lanes, dp / 2, kb_rows + kb * kBlockK * dp, dp, qp, kBlockQ, st, kBlockQ, false, p.scale);
    if (!block_fully_visible(p, i0, i0 + rows - 1, j0, qlen, klen))
      for (int64_t j = 0; j < krows; ++j) mask_key_row(p, st + j * kBlockQ, j0 + j, i0, qlen, klen);
    softmax_block(st, krows, lanes, m, corr, bsum);
    if (std::any_of(corr, corr + rows, [](float c) { return c != 1.f; })) {
      scale_lanes(ot, dp, lanes, corr);
      if (fold) scale_lanes(ot_lo, dp, lanes, corr);
      for (int64_t r = 0; r < lanes; ++r) {
        l[r] *= corr[r];
        l_lo[r] *= corr[r];
      }
    }
    // O^T += V^T P^T, P rounded to bf16 (its fp32 sum bsum is the normalizer).
    pair_rows(st, krows, pp);
    gemm(dp, lanes, ceil_div(krows, 2), vt + kb * kBlockK * dp, kBlockK, pp, kBlockQ, o_acc, kBlockQ, true, 1.f);
    for (int64_t r = 0; r < lanes; ++r) l_acc[r] += bsum[r];
    fold_sums(fold, false, &folded, l, l_lo, kBlockQ, ot, ot_lo, dp * kBlockQ, add_into);
  }
  fold_sums(fold, true, &folded, l, l_lo, kBlockQ, ot, ot_lo, dp * kBlockQ, add_into);
  finish_rows(p, b, h, i0, rows, m, l, lse, corr);
  store_lanes(p, out, p.q_start, b, h, i0, rows, ot, corr);
}

int64_t block_workspace_floats(const Problem& p) {
  // O^T (hi, lo), S^T, Q^T pairs, P^T pairs, 5 lane vectors, the Q rows.
  return 2 * p.dp * kBlockQ + kBlockK * kBlockQ + p.dp / 2 * kBlockQ + kBlockK / 2 * kBlockQ + 5 * kBlockQ +
         kBlockQ * p.dp / 2;
}

// ---------------------------------------------------------------- backward

void store_transposed(const Problem& p, const View& dst, int64_t b, int64_t g, int64_t j0, int64_t krows,
                      const float* acc_t, float a) {
  float f[kBlockK];
  std::fill(f, f + kBlockK, a);
  store_lanes(p, dst, p.k_start, b, g, j0, krows, acc_t, f);
}

}  // namespace

bool supported() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512bf16");
}

int64_t forward_workspace_floats(const Problem& p, int64_t max_k_blocks) {
  return block_workspace_floats(p) + max_k_blocks * kBlockK * p.dp;  // + bf16 K rows and V^T
}

void forward_unit(const Problem& p, const View& q, const View& k, const View& v, const View& out, float* lse,
                  int64_t b, int64_t g, int64_t qb_begin, int64_t qb_end, float* ws) {
  const int64_t dp = p.dp;
  const int64_t i_first = qb_begin * kBlockQ, i_last = std::min(qb_end * kBlockQ, p.q_len[b]) - 1;
  const Range keys = key_range(p, i_first, i_last, p.q_len[b], p.k_len[b]);
  const int64_t nkb = ceil_div(p.k_len[b], kBlockK);
  auto* kr = reinterpret_cast<uint16_t*>(ws + block_workspace_floats(p));
  uint16_t* vt = kr + nkb * kBlockK * dp;
  uint16_t tile[kBlockK * 256];
  uint32_t pairs[kBlockK / 2 * 256];
  for (int64_t kb = keys.lo / kBlockK; keys.lo <= keys.hi && kb <= keys.hi / kBlockK; ++kb) {
    const int64_t j0 = kb * kBlockK, n = std::min(kBlockK, p.k_len[b] - j0);
    copy_block(p, k, p.k_start, b, g, j0, n, kr + kb * kBlockK * dp);
    copy_block(p, v, p.k_start, b, g, j0, n, tile);
    transpose16(tile, dp, pairs, vt + kb * kBlockK * dp);
  }
  for (int64_t h = g * p.group(); h < (g + 1) * p.group(); ++h)
    for (int64_t qb = qb_begin; qb < qb_end; ++qb) forward_block(p, q, kr, vt, out, lse, b, h, qb, ws);
}

void pack_q_block(const Problem& p, const View& q, const View& grad_out, const View& out, const float* lse,
                  const float* grad_lse, int64_t b, int64_t h, int64_t qb, uint16_t* q_tiles, float* lse_rows,
                  float* delta_rows) {
  const int64_t dp = p.dp, d = p.head_dim, tile = kBlockQ * dp;
  const int64_t i0 = qb * kBlockQ, rows = std::min(kBlockQ, p.q_len[b] - i0);
  uint16_t* qr = q_tiles + 4 * p.q_tile(h, b, qb);
  float* lr = lse_rows + p.q_row(h, b, qb);
  float* dr = delta_rows + p.q_row(h, b, qb);
  uint32_t pairs[kBlockQ / 2 * 256];
  copy_block(p, q, p.q_start, b, h, i0, rows, qr);
  transpose16(qr, dp, pairs, qr + tile);
  copy_block(p, grad_out, p.q_start, b, h, i0, rows, qr + 2 * tile);
  transpose16(qr + 2 * tile, dp, pairs, qr + 3 * tile);
  const int64_t l0 = b * p.lse_batch_stride + h * p.lse_head_stride + p.q_start[b] + i0;
  for (int64_t r = 0; r < kBlockQ; ++r) {
    lr[r] = r < rows ? lse[l0 + r] : kNegInf;
    dr[r] = 0.f;
    if (r >= rows || lr[r] == kNegInf) continue;  // delta matters only where P can be nonzero
    if (r + 8 < rows) prefetch_row(static_cast<const uint16_t*>(out.data) + offset(out, p.q_start, b, i0 + r + 8, h), d);
    dr[r] = dot(qr + 2 * tile + r * dp, static_cast<const uint16_t*>(out.data) + offset(out, p.q_start, b, i0 + r, h), d);
  }
  if (grad_lse != nullptr)
    for (int64_t r = 0; r < rows; ++r) dr[r] -= grad_lse[l0 + r];
}

namespace {

// Key block kb of (b, g) as the backward's three bf16 tiles at dst (kBlockK x dp each): K^T and V^T
// as pair rows, K as pair rows.
void pack_kv_block(const Problem& p, const View& k, const View& v, int64_t b, int64_t g, int64_t kb, uint16_t* dst) {
  const int64_t dp = p.dp, j0 = kb * kBlockK, n = std::min(kBlockK, p.k_len[b] - j0);
  uint16_t rows[kBlockK * 256];
  copy_block(p, k, p.k_start, b, g, j0, n, rows);
  transpose_pairs(rows, dp, reinterpret_cast<uint32_t*>(dst));  // K^T pair rows
  pair_rows16(rows, dp, reinterpret_cast<uint32_t*>(dst + 2 * kBlockK * dp));  // K pair rows
  copy_block(p, v, p.k_start, b, g, j0, n, rows);
  transpose_pairs(rows, dp, reinterpret_cast<uint32_t*>(dst + kBlockK * dp));  // V^T pair rows
}

}  // namespace

int64_t backward_workspace_floats(const Problem& p) {
  // P, dP/dS, dK^T and dV^T (hi, lo), pair rows, dS in bf16, the key block's three bf16 tiles.
  return 2 * kBlockQ * kBlockK + 4 * kBlockK * p.dp + kBlockQ / 2 * kBlockK + kBlockQ * kBlockK / 2 +
         3 * kBlockK * p.dp / 2;
}

FASTLM_BF16_TARGET void backward_blocks(const Problem& p, const uint16_t* q_tiles, const float* lse_rows,
                                        const float* delta_rows, const View& k, const View& v, const View& dk,
                                        const View& dv, int64_t b, int64_t g, int64_t kb_begin, int64_t kb_end,
                                        float* dq_acc, float* dq_lo, float* ws) {
  const int64_t dp = p.dp, qtile = kBlockQ * dp;
  const int64_t qlen = p.q_len[b], klen = p.k_len[b];
  float* s = ws;                            // kBlockQ x kBlockK: P
  float* dpm = s + kBlockQ * kBlockK;       // kBlockQ x kBlockK: dP, then dS
  float* dkt = dpm + kBlockQ * kBlockK;     // dp x kBlockK each: dK^T and dV^T sums (hi, then lo)
  float* dvt = dkt + kBlockK * dp;
  float* dkt_lo = dvt + kBlockK * dp;
  float* dvt_lo = dkt_lo + kBlockK * dp;
  auto* pairs = reinterpret_cast<uint32_t*>(dvt_lo + kBlockK * dp);  // kBlockQ / 2 x kBlockK: P or dS pair rows
  auto* dsb = reinterpret_cast<uint16_t*>(pairs + kBlockQ / 2 * kBlockK);  // kBlockQ x kBlockK: dS in bf16
  uint16_t* kvt = dsb + kBlockQ * kBlockK;  // this key block's tiles (pack_kv_block), cache-hot

  const bool fold_q = dq_lo != nullptr && kb_end - kb_begin > kFold;
  float* dq_part = fold_q ? dq_lo : dq_acc;
  for (int64_t kb = kb_begin; kb < kb_end; ++kb) {
    const int64_t j0 = kb * kBlockK, krows = std::min(kBlockK, klen - j0);
    pack_kv_block(p, k, v, b, g, kb, kvt);
    const auto* kp = reinterpret_cast<const uint32_t*>(kvt);                     // K^T pair rows
    const auto* vp = reinterpret_cast<const uint32_t*>(kvt + kBlockK * dp);      // V^T pair rows
    const auto* kpp = reinterpret_cast<const uint32_t*>(kvt + 2 * kBlockK * dp);  // K pair rows
    const Range qbs = query_blocks_seeing(p, j0, krows, qlen, klen);
    const int64_t blocks = p.group() * std::max<int64_t>(0, qbs.hi - qbs.lo + 1);
    const bool fold = blocks > kFold;
    float* dk_part = fold ? dkt_lo : dkt;
    float* dv_part = fold ? dvt_lo : dvt;
    std::fill(dkt, dkt + (fold ? 4 : 2) * kBlockK * dp, 0.f);
    int64_t folded = 0;
    for (int64_t h = g * p.group(); h < (g + 1) * p.group(); ++h) {
      for (int64_t qb = qbs.lo; qb <= qbs.hi; ++qb) {
        const int64_t i0 = qb * kBlockQ, rows = std::min(kBlockQ, qlen - i0), mr = round_up(rows, 2);
        const uint16_t* qr = q_tiles + 4 * p.q_tile(h, b, qb);  // Q rows, Q^T, dO rows, dO^T
        const float* lr = lse_rows + p.q_row(h, b, qb);
        const float* dr = delta_rows + p.q_row(h, b, qb);
        gemm(mr, kBlockK, dp / 2, qr, dp, kp, kBlockK, s, kBlockK, false, p.scale);  // S = scale (Q K^T)
        if (!block_fully_visible(p, i0, i0 + rows - 1, j0, qlen, klen))
          for (int64_t r = 0; r < rows; ++r) mask_row(p, s + r * kBlockK, i0 + r, j0, qlen, klen);
        exp_rows(s, rows, mr, lr);  // P
        pair_rows(s, mr, pairs);
        gemm(dp, kBlockK, mr / 2, qr + 3 * qtile, kBlockQ, pairs, kBlockK, dv_part, kBlockK, true, 1.f);  // dV^T += dO^T P
        gemm(mr, kBlockK, dp / 2, qr + 2 * qtile, dp, vp, kBlockK, dpm, kBlockK, false, 1.f);  // dP = dO V^T
        ds_rows(s, dpm, mr, dr, pairs, dsb);  // dS in bf16, pair rows and rows
        gemm(dp, kBlockK, mr / 2, qr + qtile, kBlockQ, pairs, kBlockK, dk_part, kBlockK, true, 1.f);  // dK^T += Q^T dS
        gemm(mr, dp, kBlockK / 2, dsb, kBlockK, kpp, dp, dq_part + p.q_tile(h, b, qb), dp, true, 1.f);  // dQ += dS K
        fold_sums(fold, false, &folded, dkt, dkt_lo, kBlockK * dp, dvt, dvt_lo, kBlockK * dp, add_into);
      }
    }
    fold_sums(fold, true, &folded, dkt, dkt_lo, kBlockK * dp, dvt, dvt_lo, kBlockK * dp, add_into);
    store_transposed(p, dk, b, g, j0, krows, dkt, p.scale);
    store_transposed(p, dv, b, g, j0, krows, dvt, 1.f);
    if (fold_q && (kb + 1 - kb_begin) % kFold == 0) fold_dq(p, b, g, dq_acc, dq_lo, add_into);
  }
  if (fold_q) fold_dq(p, b, g, dq_acc, dq_lo, add_into);
}

FASTLM_BF16_TARGET void store_dq_block(const Problem& p, const float* dq_acc, int64_t parts, int64_t part_stride,
                                       const View& dq, int64_t b, int64_t h, int64_t qb) {
  const int64_t dp = p.dp, d = p.head_dim;
  const int64_t i0 = qb * kBlockQ, rows = std::min(kBlockQ, p.q_len[b] - i0);
  const float* first = dq_acc + p.q_tile(h, b, qb);
  const __m512 scale = _mm512_set1_ps(p.scale);
  for (int64_t r = 0; r < rows; ++r) {
    uint16_t* dst = static_cast<uint16_t*>(dq.data) + offset(dq, p.q_start, b, i0 + r, h);
    for (int64_t c = 0; c < d; c += 16) {
      __m512 acc = _mm512_loadu_ps(first + r * dp + c);
      for (int64_t k = 1; k < parts; ++k) acc = _mm512_add_ps(acc, _mm512_loadu_ps(first + k * part_stride + r * dp + c));
      _mm256_mask_storeu_epi16(dst + c, lanes16(d - c), (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(acc, scale)));
    }
  }
}

}  // namespace fastlm::cpu::attn::bf16

#else  // not x86-64: no AVX512-BF16; supported() is false, so the glue never calls the rest.

#include <cstdlib>

namespace fastlm::cpu::attn::bf16 {

bool supported() { return false; }
int64_t forward_workspace_floats(const Problem&, int64_t) { std::abort(); }
void forward_unit(const Problem&, const View&, const View&, const View&, const View&, float*, int64_t, int64_t,
                  int64_t, int64_t, float*) {
  std::abort();
}
void pack_q_block(const Problem&, const View&, const View&, const View&, const float*, const float*, int64_t, int64_t,
                  int64_t, uint16_t*, float*, float*) {
  std::abort();
}
int64_t backward_workspace_floats(const Problem&) { std::abort(); }
void backward_blocks(const Problem&, const uint16_t*, const float*, const float*, const View&, const View&,
                     const View&, const View&, int64_t, int64_t, int64_t, int64_t, float*, float*, float*) {
  std::abort();
}
void store_dq_block(const Problem&, const float*, int64_t, int64_t, const View&, int64_t, int64_t, int64_t) {
  std::abort();
}

}  // namespace fastlm::cpu::attn::bf16

#endif
