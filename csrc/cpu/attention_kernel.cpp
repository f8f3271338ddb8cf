// FlashAttention-2 CPU kernels (see attention_kernel.h): fp32 tiles, one register-blocked GEMM
// micro-kernel, a vectorizable exp, online softmax. Compiled per instruction set (FASTLM_MULTIVERSION).
#include "cpu/attention_kernel.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "cpu/attention_common.h"
#include "cpu/norm_rows.h"
#include "cpu/vectorize.h"

namespace fastlm::cpu::attn {
namespace {

static_assert(kBlockK == 64 && kBlockQ == 64, "the softmax tiles below are written for 64 = 4 x 16 lanes");

// C[MR x 16*NV] (+)= A[MR x K] B[K x 16*NV]. A is read with strides (lam per row, lak per k): the
// transposed operands (P^T, dS^T) need no copy. The MR x NV accumulators are explicit vector values
// so they stay in registers (6 x 4: 24 of the 32 AVX-512 registers); each k step broadcasts MR
// values of A against NV vectors of B. With add, A B is summed from zero and only then added to C
// (see kFold: a block's terms are not rounded against C's running total).
template <int MR, int NV>
__attribute__((always_inline)) inline void tile(int64_t K, const float* __restrict__ A, int64_t lam, int64_t lak,
                                                const float* __restrict__ B, int64_t ldb, float* __restrict__ C,
                                                int64_t ldc, bool add) {
  vec16 c[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[i][v] = vec16{};
  for (int64_t k = 0; k < K; ++k) {
    const float* b = B + k * ldb;
    vec16 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = load16(b + 16 * v);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const float x = A[i * lam + k * lak];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[i][v] += x * bv[v];
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) store16(C + i * ldc + 16 * v, add ? load16(C + i * ldc + 16 * v) + c[i][v] : c[i][v]);
}

// Rows [m, m + MR) of C, all N columns (N a multiple of 16).
template <int MR>
__attribute__((always_inline)) inline void tile_rows(int64_t N, int64_t K, const float* A, int64_t lam, int64_t lak,
                                                     const float* B, int64_t ldb, float* C, int64_t ldc,
                                                     bool add) {
  int64_t n = 0;
  for (; n + 64 <= N; n += 64) tile<MR, 4>(K, A, lam, lak, B + n, ldb, C + n, ldc, add);
  switch (N - n) {
    case 48: tile<MR, 3>(K, A, lam, lak, B + n, ldb, C + n, ldc, add); break;
    case 32: tile<MR, 2>(K, A, lam, lak, B + n, ldb, C + n, ldc, add); break;
    case 16: tile<MR, 1>(K, A, lam, lak, B + n, ldb, C + n, ldc, add); break;
    default: break;
  }
}

// C[M x N] = A[M x K] B[K x N] (C += A B with add), with M a multiple of 4 and N a multiple of 16: 6-row tiles, then
// 4-row tiles for the rest.
FASTLM_MULTIVERSION void gemm_acc(int64_t M, int64_t N, int64_t K, const float* A, int64_t lam, int64_t lak,
                                  const float* B, int64_t ldb, float* C, int64_t ldc, bool add) {
  const int64_t m6 = M / 12 * 12;  // an even number of 6-row tiles leaves a multiple of 4
  int64_t m = 0;
  for (; m < m6; m += 6) tile_rows<6>(N, K, A + m * lam, lam, lak, B, ldb, C + m * ldc, ldc, add);
  for (; m < M; m += 4) tile_rows<4>(N, K, A + m * lam, lam, lak, B, ldb, C + m * ldc, ldc, add);
}


// The compiled instances of softmax_lanes (attention_common.h).
FASTLM_MULTIVERSION void softmax_block(float* st, int64_t keys, int64_t lanes, float* m, float* corr, float* bsum) {
  softmax_lanes(st, keys, lanes, m, corr, bsum);
}

// Accuracy of long sums: a block's product (or softmax sum) is computed from zero (gemm_acc with
// add), added into a partial sum `lo` of the last kFold blocks, and `lo` into the total `hi` every
// kFold blocks. One running accumulator would round every term against the whole total (20000
// queries feeding one dV row: 20000 roundings at its largest magnitude); this way each value meets
// the total once per kFold blocks (attention_kernel.h), as in a blocked BLAS GEMM, at almost no cost.

FASTLM_MULTIVERSION void add_rows(float* dst, const float* src, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dst[j] += src[j];
}


// P = exp(S - lse) on the rows of a score tile (masked entries are -inf and become 0); rows past
// `rows` or that see no key (lse = -inf) are zero.
FASTLM_MULTIVERSION void exp_tile(float* s, int64_t rows, int64_t mr, const float* lse) {
  for (int64_t r = 0; r < mr; ++r) {
    float* sr = s + r * kBlockK;
    const bool none = r >= rows || lse[r] == kNegInf;
    const vec16 x = splat16(none ? 0.f : lse[r]);
    for (int64_t j = 0; j < kBlockK; j += 16) store16(sr + j, none ? vec16{} : exp16(load16(sr + j) - x));
  }
}

FASTLM_MULTIVERSION void scale_row(float* x, int64_t n, float a) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) x[j] *= a;
}

// The first n values of `rows` rows, ld floats apart, times a.
FASTLM_MULTIVERSION void scale_tile(float* x, int64_t rows, int64_t ld, int64_t n, float a) {
  for (int64_t r = 0; r < rows; ++r)
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) x[r * ld + j] *= a;
}

// dS = P * (dP - delta) on a tile.
FASTLM_MULTIVERSION void ds_tile(const float* p, float* dp, int64_t mr, const float* delta) {
  for (int64_t r = 0; r < mr; ++r) {
    const float dr = delta[r];
    const float* pr = p + r * kBlockK;
    float* dpr = dp + r * kBlockK;
#pragma omp simd
    for (int64_t j = 0; j < kBlockK; ++j) dpr[j] = pr[j] * (dpr[j] - dr);
  }
}

// out[r] = sum(a[r] * b[r]) for the kBlockQ rows (n floats each) of two tiles, each row summed one
// product after the other from zero: the order in which gemm_acc sums dP = dO V^T, so that
// delta = dO . O equals dP exactly when O is V (a query that sees a single key) and
// dS = P (dP - delta) is exactly 0 there, as in plain torch's softmax backward. Eight rows at a
// time, so that their chains overlap.
FASTLM_MULTIVERSION void row_dots_in_gemm_order(const float* a, const float* b, int64_t n, float* out) {
  for (int64_t r0 = 0; r0 < kBlockQ; r0 += 8) {
    float acc[8] = {};
    for (int64_t j = 0; j < n; ++j)
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) acc[i] += a[(r0 + i) * n + j] * b[(r0 + i) * n + j];
    std::copy(acc, acc + 8, out + r0);
  }
}

// ---------------------------------------------------------------- rows in and out of tensors


// dst[0:dp] = a * row (fp32), zero past head_dim.
void load_row(const View& v, int64_t off, int64_t d, int64_t dp, float a, float* dst) {
  if (v.dtype == DType::kFloat) {
    const float* src = static_cast<const float*>(v.data) + off;
    std::memcpy(dst, src, d * sizeof(float));
    if (a != 1.f) scale_row(dst, d, a);
  } else {
    bf16_to_float(static_cast<const uint16_t*>(v.data) + off, dst, d);
    if (a != 1.f) scale_row(dst, d, a);
  }
  std::fill(dst + d, dst + dp, 0.f);
}

// row (fp32, d values) * a -> v at off. tmp: d floats of scratch.
void store_row(const View& v, int64_t off, int64_t d, const float* row, float a, float* tmp) {
  if (v.dtype == DType::kFloat) {
    float* dst = static_cast<float*>(v.data) + off;
    for (int64_t c = 0; c < d; ++c) dst[c] = a * row[c];
  } else {
    for (int64_t c = 0; c < d; ++c) tmp[c] = a * row[c];
    float_to_bf16(tmp, static_cast<uint16_t*>(v.data) + off, d);
  }
}


// The Q tile transposed (dp x kBlockQ: one query per lane), zero past head_dim and `rows`.
void load_q_transposed(const Problem& p, const View& q, int64_t b, int64_t h, int64_t i0, int64_t rows, float* qt,
                       float* tmp) {
  std::fill(qt, qt + p.dp * kBlockQ, 0.f);
  for (int64_t r = 0; r < rows; ++r) {
    load_row(q, offset(q, p.q_start, b, i0 + r, h), p.head_dim, p.dp, 1.f, tmp);
    for (int64_t c = 0; c < p.head_dim; ++c) qt[c * kBlockQ + r] = tmp[c];
  }
}

// fp32 rows of key/value block kb (pointer and row stride): from `packed` (the packed rows of
// (b, g), block kb at kb * kBlockK * dp), or the input itself (packed == null: fp32 with head_dim ==
// dp). A short last block is first copied to `pad` (zero rows up to a multiple of 4) when the reader
// needs whole groups of 4 rows.
struct Rows {
  const float* data;
  int64_t ld;
};

Rows kv_rows(const Problem& p, const View& src, const float* packed, int64_t b, int64_t g, int64_t kb,
             int64_t krows, bool pad_rows, float* pad) {
  if (packed != nullptr) return {packed + kb * kBlockK * p.dp, p.dp};
  const float* first = static_cast<const float*>(src.data) + offset(src, p.k_start, b, kb * kBlockK, g);
  if (krows == kBlockK || !pad_rows) return {first, src.pos_stride};
  for (int64_t r = 0; r < krows; ++r) std::memcpy(pad + r * p.dp, first + r * src.pos_stride, p.dp * sizeof(float));
  std::fill(pad + krows * p.dp, pad + round_up(krows, 4) * p.dp, 0.f);
  return {pad, p.dp};
}

// Key/value block kb of sequence b, kv head g as fp32 rows (kBlockK x dp, zero padded) at dst.
void pack_rows(const Problem& p, const View& src, int64_t b, int64_t g, int64_t kb, float* dst) {
  const int64_t dp = p.dp, j0 = kb * kBlockK, n = std::min(kBlockK, p.k_len[b] - j0);
  for (int64_t r = 0; r < n; ++r)
    load_row(src, offset(src, p.k_start, b, j0 + r, g), p.head_dim, dp, 1.f, dst + r * dp);
  std::fill(dst + n * dp, dst + kBlockK * dp, 0.f);
}

// Forward of query block qb of sequence b, head h (see forward_unit): k_rows / v_rows are the fp32
// rows of (b, g) from pack_rows, or null to read k / v in place.
void forward_block(const Problem& p, const View& q, const View& k, const View& v, const float* k_rows,
                   const float* v_rows, const View& out, float* lse, int64_t b, int64_t h, int64_t qb, float* ws) {
  const int64_t dp = p.dp, d = p.head_dim;
  const int64_t qlen = p.q_len[b], klen = p.k_len[b];
  const int64_t i0 = qb * kBlockQ, rows = std::min(kBlockQ, qlen - i0);
  const int64_t lanes = round_up(rows, 16), mr = round_up(rows, 4);
  const int64_t g = h / p.group();
  float* qt = ws;                     // dp x kBlockQ: Q^T
  float* o = qt + kBlockQ * dp;       // kBlockQ x dp each: the output sum (hi, lo: see kFold)
  float* o_lo = o + kBlockQ * dp;
  float* kpad = o_lo + kBlockQ * dp;  // kBlockK x dp: a short last key block
  float* st = kpad + kBlockK * dp;    // kBlockK x kBlockQ: S^T, then P^T
  float* m = st + kBlockK * kBlockQ;  // kBlockQ each: running max, softmax sum (hi, lo), block sum, rescale
  float* l = m + kBlockQ;
  float* l_lo = l + kBlockQ;
  float* bsum = l_lo + kBlockQ;
  float* corr = bsum + kBlockQ;
  float* tmp = corr + kBlockQ;  // dp

  load_q_transposed(p, q, b, h, i0, rows, qt, tmp);
  const Range keys = key_range(p, i0, i0 + rows - 1, qlen, klen);
  const int64_t blocks = keys.lo <= keys.hi ? keys.hi / kBlockK - keys.lo / kBlockK + 1 : 0;
  const bool fold = blocks > kFold;  // fewer blocks go straight into the totals
  float* o_acc = fold ? o_lo : o;
  float* l_acc = fold ? l_lo : l;
  std::fill(m, m + kBlockQ, kNegInf);
  std::fill(l, l + 2 * kBlockQ, 0.f);  // l, l_lo
  std::fill(o, o + mr * dp, 0.f);
  if (fold) std::fill(o_lo, o_lo + mr * dp, 0.f);
  int64_t folded = 0;

  if (blocks > 0) {
    for (int64_t kb = keys.lo / kBlockK; kb <= keys.hi / kBlockK; ++kb) {
      const int64_t j0 = kb * kBlockK, krows = std::min(kBlockK, klen - j0);
      // S^T = scale (K Q^T): keys in rows, queries in lanes. Scaling the product (not Q) rounds as
      // plain torch does, for any scale.
      const Rows kr = kv_rows(p, k, k_rows, b, g, kb, krows, true, kpad);
      gemm_acc(round_up(krows, 4), lanes, dp, kr.data, kr.ld, 1, qt, kBlockQ, st, kBlockQ, false);
      scale_tile(st, krows, kBlockQ, lanes, p.scale);
      if (!block_fully_visible(p, i0, i0 + rows - 1, j0, qlen, klen))
        for (int64_t j = 0; j < krows; ++j) mask_key_row(p, st + j * kBlockQ, j0 + j, i0, qlen, klen);
      softmax_block(st, krows, lanes, m, corr, bsum);
      for (int64_t r = 0; r < mr; ++r) {  // rows whose max moved: rescale what was summed so far
        if (corr[r] == 1.f) continue;
        scale_row(o + r * dp, dp, corr[r]);
        if (fold) scale_row(o_lo + r * dp, dp, corr[r]);
        l[r] *= corr[r];
        l_lo[r] *= corr[r];
      }
      // O += P V, reading P^T with strides.
      const Rows vr = kv_rows(p, v, v_rows, b, g, kb, krows, false, nullptr);
      gemm_acc(mr, dp, krows, st, 1, kBlockQ, vr.data, vr.ld, o_acc, dp, true);
      add_rows(l_acc, bsum, mr);
      fold_sums(fold, false, &folded, l, l_lo, mr, o, o_lo, mr * dp, add_rows);
    }
  }
  fold_sums(fold, true, &folded, l, l_lo, mr, o, o_lo, mr * dp, add_rows);
  finish_rows(p, b, h, i0, rows, m, l, lse, corr);
  for (int64_t r = 0; r < rows; ++r) store_row(out, offset(out, p.q_start, b, i0 + r, h), d, o + r * dp, corr[r], tmp);
}

}  // namespace

int64_t workspace_floats(const Problem& p) {
  // The larger of forward_block's and backward_blocks' scratch (kBlockQ == kBlockK).
  return 4 * kBlockQ * p.dp + 2 * kBlockQ * kBlockK + 6 * kBlockQ + p.dp;
}

void pack_kv_block(const Problem& p, const View& src, int64_t b, int64_t g, int64_t kb, float* rows,
                   float* transposed) {
  const int64_t dp = p.dp;
  float tile[kBlockK * 256];  // dp <= 256
  float* r = rows != nullptr ? rows + p.k_tile(g, b, kb) : tile;
  pack_rows(p, src, b, g, kb, r);
  if (transposed != nullptr) {
    float* t = transposed + p.k_tile(g, b, kb);
    for (int64_t j = 0; j < kBlockK; ++j)
      for (int64_t c = 0; c < dp; ++c) t[c * kBlockK + j] = r[j * dp + c];
  }
}

int64_t forward_workspace_floats(const Problem& p, int64_t max_k_blocks) {
  return workspace_floats(p) + 2 * max_k_blocks * kBlockK * p.dp;
}

void forward_unit(const Problem& p, const View& q, const View& k, const View& v, const View& out, float* lse,
                  int64_t b, int64_t g, int64_t qb_begin, int64_t qb_end, bool kv_in_place, float* ws) {
  const float* k_rows = nullptr;
  const float* v_rows = nullptr;
  if (!kv_in_place) {
    // The key blocks any of these queries sees, packed once for all q heads of the group.
    const int64_t i_first = qb_begin * kBlockQ, i_last = std::min(qb_end * kBlockQ, p.q_len[b]) - 1;
    const Range keys = key_range(p, i_first, i_last, p.q_len[b], p.k_len[b]);
    const int64_t nkb = ceil_div(p.k_len[b], kBlockK);
    float* kr = ws + workspace_floats(p);
    float* vr = kr + nkb * kBlockK * p.dp;
    for (int64_t kb = keys.lo / kBlockK; keys.lo <= keys.hi && kb <= keys.hi / kBlockK; ++kb) {
      pack_rows(p, k, b, g, kb, kr + kb * kBlockK * p.dp);
      pack_rows(p, v, b, g, kb, vr + kb * kBlockK * p.dp);
    }
    k_rows = kr;
    v_rows = vr;
  }
  for (int64_t h = g * p.group(); h < (g + 1) * p.group(); ++h)
    for (int64_t qb = qb_begin; qb < qb_end; ++qb) forward_block(p, q, k, v, k_rows, v_rows, out, lse, b, h, qb, ws);
}

void pack_q_block(const Problem& p, const View& q, const View& grad_out, const View& out, const float* lse,
                  const float* grad_lse, int64_t b, int64_t h, int64_t qb, float* q_tiles, float* do_tiles,
                  float* lse_rows, float* delta_rows) {
  const int64_t dp = p.dp, d = p.head_dim;
  const int64_t i0 = qb * kBlockQ, rows = std::min(kBlockQ, p.q_len[b] - i0);
  float* qt = q_tiles + p.q_tile(h, b, qb);
  float* dot = do_tiles + p.q_tile(h, b, qb);
  float* lr = lse_rows + p.q_row(h, b, qb);
  float* dr = delta_rows + p.q_row(h, b, qb);
  const int64_t l0 = b * p.lse_batch_stride + h * p.lse_head_stride + p.q_start[b] + i0;  // lse of row 0
  for (int64_t r = 0; r < kBlockQ; ++r) lr[r] = r < rows ? lse[l0 + r] : kNegInf;
  // delta matters only where P can be nonzero: skipped for a block whose queries see no key.
  const bool any = std::any_of(lr, lr + rows, [](float x) { return x != kNegInf; });
  float o[kBlockQ * 256];  // O rows, dp <= 256
  for (int64_t r = 0; r < kBlockQ; ++r) {
    if (r >= rows) {
      std::fill(qt + r * dp, qt + (r + 1) * dp, 0.f);
      std::fill(dot + r * dp, dot + (r + 1) * dp, 0.f);
      if (any) std::fill(o + r * dp, o + (r + 1) * dp, 0.f);
      continue;
    }
    load_row(q, offset(q, p.q_start, b, i0 + r, h), d, dp, 1.f, qt + r * dp);
    load_row(grad_out, offset(grad_out, p.q_start, b, i0 + r, h), d, dp, 1.f, dot + r * dp);
    if (any) load_row(out, offset(out, p.q_start, b, i0 + r, h), d, dp, 1.f, o + r * dp);
  }
  if (any)
    row_dots_in_gemm_order(dot, o, dp, dr);  // 0 for the padding rows
  else
    std::fill(dr, dr + kBlockQ, 0.f);
  if (grad_lse != nullptr)
    for (int64_t r = 0; r < rows; ++r) dr[r] -= grad_lse[l0 + r];
}

void backward_blocks(const Problem& p, const float* q_tiles, const float* do_tiles, const float* lse_rows,
                     const float* delta_rows, const float* k_rows, const float* k_t, const float* v_t,
                     const View& dk, const View& dv, int64_t b, int64_t g, int64_t kb_begin, int64_t kb_end,
                     float* dq_acc, float* dq_lo, float* ws) {
  const int64_t dp = p.dp, d = p.head_dim;
  const int64_t qlen = p.q_len[b], klen = p.k_len[b];
  float* s = ws;                            // kBlockQ x kBlockK: P
  float* dpm = s + kBlockQ * kBlockK;       // kBlockQ x kBlockK: dP, then dS
  float* dk_acc = dpm + kBlockQ * kBlockK;  // kBlockK x dp each: dK and dV sums (hi, then lo: see kFold)
  float* dv_acc = dk_acc + kBlockK * dp;
  float* dk_lo = dv_acc + kBlockK * dp;
  float* dv_lo = dk_lo + kBlockK * dp;
  float* tmp = dv_lo + kBlockK * dp;        // dp

  // dQ sums one block product per key block: with more than kFold of them, fold as dK and dV do.
  const bool fold_q = dq_lo != nullptr && kb_end - kb_begin > kFold;
  float* dq_part = fold_q ? dq_lo : dq_acc;
  for (int64_t kb = kb_begin; kb < kb_end; ++kb) {
    const int64_t j0 = kb * kBlockK, krows = std::min(kBlockK, klen - j0);
    const int64_t tile = p.k_tile(g, b, kb);
    // The queries that see at least one key of this block.
    const Range qbs = query_blocks_seeing(p, j0, krows, qlen, klen);
    const int64_t blocks = p.group() * std::max<int64_t>(0, qbs.hi - qbs.lo + 1);
    const bool fold = blocks > kFold;  // fewer blocks go straight into the totals
    float* dk_part = fold ? dk_lo : dk_acc;
    float* dv_part = fold ? dv_lo : dv_acc;
    std::fill(dk_acc, dk_acc + (fold ? 4 : 2) * kBlockK * dp, 0.f);  // dk_acc, dv_acc (, dk_lo, dv_lo)
    int64_t folded = 0;
    for (int64_t h = g * p.group(); h < (g + 1) * p.group(); ++h) {
      for (int64_t qb = qbs.lo; qb <= qbs.hi; ++qb) {
        const int64_t i0 = qb * kBlockQ, rows = std::min(kBlockQ, qlen - i0), mr = round_up(rows, 4);
        const float* qt = q_tiles + p.q_tile(h, b, qb);
        const float* dot = do_tiles + p.q_tile(h, b, qb);
        const float* lr = lse_rows + p.q_row(h, b, qb);
        const float* dr = delta_rows + p.q_row(h, b, qb);
        gemm_acc(mr, kBlockK, dp, qt, dp, 1, k_t + tile, kBlockK, s, kBlockK, false);
        scale_tile(s, mr, kBlockK, kBlockK, p.scale);  // S = scale (Q K^T)
        const bool full = block_fully_visible(p, i0, i0 + rows - 1, j0, qlen, klen);
        if (!full)
          for (int64_t r = 0; r < rows; ++r) mask_row(p, s + r * kBlockK, i0 + r, j0, qlen, klen);
        exp_tile(s, rows, mr, lr);  // P
        gemm_acc(kBlockK, dp, mr, s, 1, kBlockK, dot, dp, dv_part, dp, true);             // dV += P^T dO
        gemm_acc(mr, kBlockK, dp, dot, dp, 1, v_t + tile, kBlockK, dpm, kBlockK, false);  // dP = dO V^T
        ds_tile(s, dpm, mr, dr);  // dS = P * (dP - delta)
        gemm_acc(kBlockK, dp, mr, dpm, 1, kBlockK, qt, dp, dk_part, dp, true);  // dK += dS^T Q (scaled at the end)
        gemm_acc(mr, dp, kBlockK, dpm, kBlockK, 1, k_rows + tile, dp, dq_part + p.q_tile(h, b, qb), dp,
                 true);  // dQ += dS K
        fold_sums(fold, false, &folded, dk_acc, dk_lo, kBlockK * dp, dv_acc, dv_lo, kBlockK * dp, add_rows);
      }
    }
    fold_sums(fold, true, &folded, dk_acc, dk_lo, kBlockK * dp, dv_acc, dv_lo, kBlockK * dp, add_rows);
    for (int64_t r = 0; r < krows; ++r) {
      store_row(dk, offset(dk, p.k_start, b, j0 + r, g), d, dk_acc + r * dp, p.scale, tmp);
      store_row(dv, offset(dv, p.k_start, b, j0 + r, g), d, dv_acc + r * dp, 1.f, tmp);
    }
    if (fold_q && (kb + 1 - kb_begin) % kFold == 0) fold_dq(p, b, g, dq_acc, dq_lo, add_rows);
  }
  if (fold_q) fold_dq(p, b, g, dq_acc, dq_lo, add_rows);
}

void store_dq_block(const Problem& p, const float* dq_acc, int64_t parts, int64_t part_stride, const View& dq,
                    int64_t b, int64_t h, int64_t qb) {
  const int64_t dp = p.dp, d = p.head_dim;
  const int64_t i0 = qb * kBlockQ, rows = std::min(kBlockQ, p.q_len[b] - i0);
  const float* first = dq_acc + p.q_tile(h, b, qb);
  float sum[512], tmp[512];
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = first + r * dp;
    if (parts > 1) {
      std::memcpy(sum, row, d * sizeof(float));
      for (int64_t c = 1; c < parts; ++c) add_into(row + c * part_stride, sum, d);
      row = sum;
    }
    store_row(dq, offset(dq, p.q_start, b, i0 + r, h), d, row, p.scale, tmp);
  }
}

}  // namespace fastlm::cpu::attn
