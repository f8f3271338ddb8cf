// Pieces shared by the fp32 and the bf16 CPU attention kernels (attention_kernel.cpp,
// attention_bf16_kernel.cpp): 16-lane vector helpers and exp, the online-softmax step on a
// transposed score tile, and the mask geometry. All inline: each kernel file compiles them for its
// own instruction sets.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "cpu/attention_kernel.h"

namespace fastlm::cpu::attn {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// (vec16 helpers are always inlined: the ABI note about passing 64-byte vectors does not apply.)
#pragma GCC diagnostic ignored "-Wpsabi"
// 16 floats as one value: an AVX-512 register in the v4 clone (two AVX2 registers in v3).
typedef float vec16 __attribute__((vector_size(64)));

__attribute__((always_inline)) inline vec16 load16(const float* p) {
  vec16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
__attribute__((always_inline)) inline void store16(float* p, vec16 v) { std::memcpy(p, &v, sizeof(v)); }
typedef int32_t ivec16 __attribute__((vector_size(64)));

__attribute__((always_inline)) inline vec16 splat16(float x) { return vec16{} + x; }

// exp(x) for x <= 0 (as in softmax) on 16 lanes, ~1 ulp: x = n ln2 + r, |r| <= ln2/2, exp(r) by the
// Cephes polynomial, 2^n through the exponent bits. Branch-free vector code (std::exp does not
// vectorize without -ffast-math). Returns 0 below -87 (and for -inf): masked scores give exact zeros.
__attribute__((always_inline)) inline vec16 exp16(vec16 x) {
  const vec16 lo = splat16(-87.f);
  const vec16 xc = x < lo ? lo : x;  // x <= 0 (callers subtract the max or the logsumexp)
  const vec16 magic = splat16(12582912.f);
  const vec16 t = xc * 1.44269504088896341f + magic;
  const vec16 n = t - magic;
  const vec16 r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  vec16 y = splat16(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = (y * r + 1.f) * r + 1.f;  // 1 + r + r^2 y, as two FMAs
  const ivec16 e = (((ivec16)t - 0x4B400000) + 127) << 23;
  const vec16 res = y * (vec16)e;
  return x < lo ? vec16{} : res;
}

// Online-softmax step on a transposed score tile: st holds `keys` rows (one per key) of kBlockQ
// query lanes, of which the first 16 * NV are live. Keeping queries in the vector lanes makes the
// row max and sum plain vertical ops, with no horizontal reductions. st becomes P; the running max m
// (per query lane) is updated; corr gets each lane's rescale factor for what was summed before
// (exactly 1 where the max did not move) and bsum the sum of this block's P alone.
template <int NV>
__attribute__((always_inline)) inline void softmax_cols(float* st, int64_t keys, float* m, float* corr, float* bsum) {
  vec16 mx[NV], base[NV], sum[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) mx[v] = load16(m + 16 * v);
  for (int64_t j = 0; j < keys; ++j) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const vec16 x = load16(st + j * kBlockQ + 16 * v);
      mx[v] = mx[v] > x ? mx[v] : x;
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    base[v] = mx[v] == splat16(kNegInf) ? vec16{} : mx[v];                // a lane that sees nothing yet: no NaN
    store16(corr + 16 * v, exp16(load16(m + 16 * v) - base[v]));        // old max -inf: 0
    store16(m + 16 * v, mx[v]);
    sum[v] = vec16{};
  }
  for (int64_t j = 0; j < keys; ++j) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* x = st + j * kBlockQ + 16 * v;
      const vec16 e = exp16(load16(x) - base[v]);
      store16(x, e);
      sum[v] += e;
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) store16(bsum + 16 * v, sum[v]);
}

// softmax_cols on the first `lanes` query lanes (rounded up to 16).
__attribute__((always_inline)) inline void softmax_lanes(float* st, int64_t keys, int64_t lanes, float* m, float* corr,
                                                         float* bsum) {
  switch (ceil_div(lanes, 16)) {
    case 1: softmax_cols<1>(st, keys, m, corr, bsum); break;
    case 2: softmax_cols<2>(st, keys, m, corr, bsum); break;
    case 3: softmax_cols<3>(st, keys, m, corr, bsum); break;
    default: softmax_cols<4>(st, keys, m, corr, bsum); break;
  }
}

inline int64_t offset(const View& v, const int64_t* start, int64_t b, int64_t i, int64_t h) {
  return b * v.batch_stride + (start[b] + i) * v.pos_stride + h * v.head_stride;
}

// Which keys the rows [i_first, i_last] of a sequence see, at most (inclusive; empty if lo > hi).
struct Range {
  int64_t lo, hi;
};

inline Range key_range(const Problem& p, int64_t i_first, int64_t i_last, int64_t qlen, int64_t klen) {
  const int64_t off = klen - qlen;
  Range r{0, klen - 1};
  if (p.window_left >= 0) r.lo = std::max(r.lo, i_first + off - p.window_left);
  if (p.window_right >= 0) r.hi = std::min(r.hi, i_last + off + p.window_right);
  return r;
}

// The query blocks [lo, hi] (empty if lo > hi) with a query that sees a key of [j0, j0 + krows).
inline Range query_blocks_seeing(const Problem& p, int64_t j0, int64_t krows, int64_t qlen, int64_t klen) {
  const int64_t off = klen - qlen;
  int64_t i_lo = 0, i_hi = qlen - 1;
  if (p.window_right >= 0) i_lo = std::max(i_lo, j0 - off - p.window_right);
  if (p.window_left >= 0) i_hi = std::min(i_hi, j0 + krows - 1 - off + p.window_left);
  return i_lo <= i_hi ? Range{i_lo / kBlockQ, i_hi / kBlockQ} : Range{0, -1};
}

// kFold bookkeeping (attention_kernel.h) of two sums x and y (nx and ny floats) fed one block product
// at a time into their partial sums x_lo and y_lo: every kFold-th block (and with last, after the
// loop, whatever is left) moves the partial sums into the totals. add(dst, src, n): dst += src.
template <typename Add>
inline void fold_sums(bool fold, bool last, int64_t* folded, float* x, float* x_lo, int64_t nx, float* y, float* y_lo,
                      int64_t ny, const Add& add) {
  if (!fold || (!last && ++*folded % kFold != 0)) return;
  add(x, x_lo, nx);
  add(y, y_lo, ny);
  std::fill(x_lo, x_lo + nx, 0.f);
  std::fill(y_lo, y_lo + ny, 0.f);
}

// The same for the dQ sums of every q head of kv head g of sequence b (query tiles of dq, dq_lo).
template <typename Add>
inline void fold_dq(const Problem& p, int64_t b, int64_t g, float* dq, float* dq_lo, const Add& add) {
  const int64_t n = kBlockQ * p.dp;
  for (int64_t h = g * p.group(); h < (g + 1) * p.group(); ++h)
    for (int64_t qb = 0; qb * kBlockQ < p.q_len[b]; ++qb) {
      add(dq + p.q_tile(h, b, qb), dq_lo + p.q_tile(h, b, qb), n);
      std::fill(dq_lo + p.q_tile(h, b, qb), dq_lo + p.q_tile(h, b, qb) + n, 0.f);
    }
}

// After a query block's last key block: the lse of its rows (m + log l; -inf for a row that saw no
// key) into lse, and each row's output factor (1 / l; 0 for such a row) into inv.
inline void finish_rows(const Problem& p, int64_t b, int64_t h, int64_t i0, int64_t rows, const float* m,
                        const float* l, float* lse, float* inv) {
  float* row_lse = lse + b * p.lse_batch_stride + h * p.lse_head_stride + p.q_start[b] + i0;
  for (int64_t r = 0; r < rows; ++r) {
    const bool any = l[r] > 0.f;
    inv[r] = any ? 1.f / l[r] : 0.f;
    row_lse[r] = any ? m[r] + std::log(l[r]) : kNegInf;
  }
}

// Does every row in [i_first, i_last] see every key of [j0, j0 + kBlockK)?
inline bool block_fully_visible(const Problem& p, int64_t i_first, int64_t i_last, int64_t j0, int64_t qlen,
                                int64_t klen) {
  const int64_t off = klen - qlen;
  if (j0 + kBlockK > klen) return false;
  if (p.window_left >= 0 && j0 < i_last + off - p.window_left) return false;
  if (p.window_right >= 0 && j0 + kBlockK - 1 > i_first + off + p.window_right) return false;
  return true;
}

// Sets the scores of keys row i cannot see to -inf.
inline void mask_row(const Problem& p, float* s, int64_t i, int64_t j0, int64_t qlen, int64_t klen) {
  const int64_t off = klen - qlen;
  int64_t lo = 0, hi = klen - 1;
  if (p.window_left >= 0) lo = std::max(lo, i + off - p.window_left);
  if (p.window_right >= 0) hi = std::min(hi, i + off + p.window_right);
  for (int64_t j = 0; j < kBlockK; ++j) {
    const int64_t pos = j0 + j;
    if (pos < lo || pos > hi) s[j] = kNegInf;
  }
}

// Sets the scores of queries key j0 + j cannot be seen by to -inf, in the transposed tile row
// st_row (query lanes i0 .. i0 + kBlockQ - 1).
inline void mask_key_row(const Problem& p, float* st_row, int64_t pos, int64_t i0, int64_t qlen, int64_t klen) {
  const int64_t off = klen - qlen;
  // Query i sees pos when i + off - left <= pos <= i + off + right.
  const int64_t i_lo = p.window_right >= 0 ? pos - off - p.window_right : i0;
  const int64_t i_hi = p.window_left >= 0 ? pos - off + p.window_left : i0 + kBlockQ;
  for (int64_t q = 0; q < kBlockQ; ++q) {
    const int64_t i = i0 + q;
    if (i < i_lo || i > i_hi) st_row[q] = kNegInf;
  }
}

}  // namespace fastlm::cpu::attn
