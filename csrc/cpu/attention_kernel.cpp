// FlashAttention-2 CPU kernels (see attention_kernel.h): fp32 tiles, one register-blocked GEMM
// micro-kernel, a vectorizable exp, online softmax. Compiled per instruction set (FASTLM_MULTIVERSION).
#include "cpu/attention_kernel.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "cpu/norm_rows.h"
#include "cpu/vectorize.h"

namespace fastlm::cpu::attn {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp(x) for x <= 0 (as in softmax), ~1 ulp: x = n ln2 + r, |r| <= ln2/2, exp(r) by the Cephes
// polynomial, 2^n through the exponent bits. Branch-free, so `omp simd` loops vectorize it
// (std::exp does not vectorize without -ffast-math). Returns 0 below -87 (and for -inf).
__attribute__((always_inline)) inline float exp_neg(float x) {
  const float xc = x < -87.f ? -87.f : (x > 0.f ? 0.f : x);
  const float magic = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer in the low mantissa bits
  const float t = xc * 1.44269504088896341f + magic;
  const float n = t - magic;
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.f;
  int32_t tb;
  std::memcpy(&tb, &t, sizeof(tb));
  const int32_t e = (tb - 0x4B400000) + 127;  // n + 127
  const int32_t bits = e << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.f ? 0.f : y * scale;
}

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

// exp_neg on 16 lanes.
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
  y = y * r * r + r + 1.f;
  const ivec16 e = (((ivec16)t - 0x4B400000) + 127) << 23;
  const vec16 res = y * (vec16)e;
  return x < lo ? vec16{} : res;
}

__attribute__((always_inline)) inline float hmax16(vec16 v) {  // a shuffle tree, not 15 dependent steps
  const ivec16 hi8 = {8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15};
  vec16 w = __builtin_shuffle(v, hi8);
  v = v > w ? v : w;
  const ivec16 hi4 = {4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7};
  w = __builtin_shuffle(v, hi4);
  v = v > w ? v : w;
  return std::max(std::max(v[0], v[1]), std::max(v[2], v[3]));
}
__attribute__((always_inline)) inline float hsum16(vec16 v) {
  const ivec16 hi8 = {8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15};
  v += __builtin_shuffle(v, hi8);
  const ivec16 hi4 = {4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7};
  v += __builtin_shuffle(v, hi4);
  return (v[0] + v[2]) + (v[1] + v[3]);
}
static_assert(kBlockK == 64, "the softmax tiles below are written for 64 keys: 4 x 16 lanes");

// C[4 x 16*NV] (+)= A[4 x K] B[K x 16*NV]. A is read with strides (lam per row, lak per k): the
// transposed operands (P^T, dS^T) need no copy. The 4 x NV accumulators are explicit vector values
// so they stay in registers (NV = 4: 16 AVX-512 registers); each k step broadcasts 4 values of A.
template <int NV>
__attribute__((always_inline)) inline void tile4(int64_t K, const float* __restrict__ A, int64_t lam, int64_t lak,
                                                 const float* __restrict__ B, int64_t ldb, float* __restrict__ C,
                                                 int64_t ldc, bool zero_init) {
  vec16 c0[NV], c1[NV], c2[NV], c3[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    if (zero_init) {
      c0[v] = c1[v] = c2[v] = c3[v] = vec16{};
    } else {
      c0[v] = load16(C + 16 * v);
      c1[v] = load16(C + ldc + 16 * v);
      c2[v] = load16(C + 2 * ldc + 16 * v);
      c3[v] = load16(C + 3 * ldc + 16 * v);
    }
  }
  const float* a0 = A;
  const float* a1 = A + lam;
  const float* a2 = A + 2 * lam;
  const float* a3 = A + 3 * lam;
  for (int64_t k = 0; k < K; ++k) {
    const float* b = B + k * ldb;
    const float x0 = a0[k * lak], x1 = a1[k * lak], x2 = a2[k * lak], x3 = a3[k * lak];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const vec16 bv = load16(b + 16 * v);
      c0[v] += x0 * bv;
      c1[v] += x1 * bv;
      c2[v] += x2 * bv;
      c3[v] += x3 * bv;
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    store16(C + 16 * v, c0[v]);
    store16(C + ldc + 16 * v, c1[v]);
    store16(C + 2 * ldc + 16 * v, c2[v]);
    store16(C + 3 * ldc + 16 * v, c3[v]);
  }
}

// C[M x N] (+)= A[M x K] B[K x N] with M a multiple of 4 and N a multiple of 16.
FASTLM_MULTIVERSION void gemm_acc(int64_t M, int64_t N, int64_t K, const float* A, int64_t lam, int64_t lak,
                                  const float* B, int64_t ldb, float* C, int64_t ldc, bool zero_init) {
  for (int64_t m = 0; m < M; m += 4) {
    const float* a = A + m * lam;
    float* c = C + m * ldc;
    int64_t n = 0;
    for (; n + 64 <= N; n += 64) tile4<4>(K, a, lam, lak, B + n, ldb, c + n, ldc, zero_init);
    switch (N - n) {
      case 48: tile4<3>(K, a, lam, lak, B + n, ldb, c + n, ldc, zero_init); break;
      case 32: tile4<2>(K, a, lam, lak, B + n, ldb, c + n, ldc, zero_init); break;
      case 16: tile4<1>(K, a, lam, lak, B + n, ldb, c + n, ldc, zero_init); break;
      default: break;
    }
  }
}

// Online-softmax step of the first `rows` rows of a score tile (in place: S becomes P relative to
// each row's new max); the output rows o (stride dp) are rescaled when the max grows. A row of
// kBlockK = 64 scores is 4 vectors of 16.
FASTLM_MULTIVERSION void softmax_update(float* s, int64_t rows, float* m, float* l, float* o, int64_t dp) {
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * kBlockK;
    vec16 x0 = load16(sr), x1 = load16(sr + 16), x2 = load16(sr + 32), x3 = load16(sr + 48);
    vec16 vm = x0 > x1 ? x0 : x1;
    const vec16 vm2 = x2 > x3 ? x2 : x3;
    vm = vm > vm2 ? vm : vm2;
    const float mx = hmax16(vm);
    if (mx == kNegInf) {  // nothing visible in this block
      store16(sr, vec16{});
      store16(sr + 16, vec16{});
      store16(sr + 32, vec16{});
      store16(sr + 48, vec16{});
      continue;
    }
    const float m_new = std::max(m[r], mx);
    const vec16 mv = splat16(m_new);
    x0 = exp16(x0 - mv);
    x1 = exp16(x1 - mv);
    x2 = exp16(x2 - mv);
    x3 = exp16(x3 - mv);
    store16(sr, x0);
    store16(sr + 16, x1);
    store16(sr + 32, x2);
    store16(sr + 48, x3);
    const float sum = hsum16((x0 + x1) + (x2 + x3));
    if (m_new != m[r]) {
      const float corr = exp_neg(m[r] - m_new);
      float* orow = o + r * dp;
      for (int64_t c = 0; c < dp; c += 16) store16(orow + c, load16(orow + c) * corr);
      l[r] *= corr;
      m[r] = m_new;
    }
    l[r] += sum;
  }
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

FASTLM_MULTIVERSION float dot_row(const float* a, const float* b, int64_t n) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) acc += a[j] * b[j];
  return acc;
}

// ---------------------------------------------------------------- rows in and out of tensors

inline int64_t offset(const View& v, const int64_t* start, int64_t b, int64_t i, int64_t h) {
  return b * v.batch_stride + (start[b] + i) * v.pos_stride + h * v.head_stride;
}

// dst[0:dp] = a * row (fp32), zero past head_dim.
void load_row(const View& v, int64_t off, int64_t d, int64_t dp, float a, float* dst) {
  if (v.dtype == DType::kFloat) {
    const float* src = static_cast<const float*>(v.data) + off;
    for (int64_t c = 0; c < d; ++c) dst[c] = a * src[c];
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

}  // namespace

int64_t workspace_floats(const Problem& p) {
  return 4 * kBlockQ * p.dp + 2 * kBlockQ * kBlockK + 2 * kBlockQ + 2 * kBlockK * p.dp + p.dp;
}

void pack_kv_block(const Problem& p, const View& src, int64_t b, int64_t g, int64_t kb, float* rows,
                   float* transposed) {
  const int64_t dp = p.dp, d = p.head_dim;
  const int64_t j0 = kb * kBlockK, n = std::min(kBlockK, p.k_len[b] - j0);
  float row[512];  // dp <= 256
  for (int64_t r = 0; r < kBlockK; ++r) {
    if (r < n) {
      load_row(src, offset(src, p.k_start, b, j0 + r, g), d, dp, 1.f, row);
    } else {
      std::fill(row, row + dp, 0.f);
    }
    if (rows != nullptr) std::memcpy(rows + p.k_tile(g, b, kb) + r * dp, row, dp * sizeof(float));
    if (transposed != nullptr) {
      float* t = transposed + p.k_tile(g, b, kb);
      for (int64_t c = 0; c < dp; ++c) t[c * kBlockK + r] = row[c];
    }
  }
}

void forward_block(const Problem& p, const View& q, const float* k_t, const float* v_rows, const View& out,
                   float* lse, int64_t b, int64_t h, int64_t qb, float* ws) {
  const int64_t dp = p.dp, d = p.head_dim;
  const int64_t qlen = p.q_len[b], klen = p.k_len[b];
  const int64_t i0 = qb * kBlockQ, rows = std::min(kBlockQ, qlen - i0), mr = round_up(rows, 4);
  const int64_t g = h / p.group();
  float* qt = ws;                   // kBlockQ x dp
  float* o = qt + kBlockQ * dp;     // kBlockQ x dp
  float* s = o + kBlockQ * dp;      // kBlockQ x kBlockK
  float* m = s + kBlockQ * kBlockK;  // kBlockQ
  float* l = m + kBlockQ;           // kBlockQ
  float* tmp = l + kBlockQ;         // dp

  for (int64_t r = 0; r < mr; ++r) {
    if (r < rows) {
      load_row(q, offset(q, p.q_start, b, i0 + r, h), d, dp, p.scale, qt + r * dp);
    } else {
      std::fill(qt + r * dp, qt + (r + 1) * dp, 0.f);
    }
    m[r] = kNegInf;
    l[r] = 0.f;
  }
  std::fill(o, o + mr * dp, 0.f);

  const Range keys = key_range(p, i0, i0 + rows - 1, qlen, klen);
  if (keys.lo <= keys.hi) {
    for (int64_t kb = keys.lo / kBlockK; kb <= keys.hi / kBlockK; ++kb) {
      const int64_t j0 = kb * kBlockK;
      gemm_acc(mr, kBlockK, dp, qt, dp, 1, k_t + p.k_tile(g, b, kb), kBlockK, s, kBlockK, true);
      const bool full = block_fully_visible(p, i0, i0 + rows - 1, j0, qlen, klen);
      if (!full)
        for (int64_t r = 0; r < rows; ++r) mask_row(p, s + r * kBlockK, i0 + r, j0, qlen, klen);
      softmax_update(s, rows, m, l, o, dp);
      for (int64_t r = rows; r < mr; ++r) std::fill(s + r * kBlockK, s + (r + 1) * kBlockK, 0.f);
      gemm_acc(mr, dp, kBlockK, s, kBlockK, 1, v_rows + p.k_tile(g, b, kb), dp, o, dp, false);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const bool any = l[r] > 0.f;
    store_row(out, offset(out, p.q_start, b, i0 + r, h), d, o + r * dp, any ? 1.f / l[r] : 0.f, tmp);
    lse[b * p.lse_batch_stride + h * p.lse_head_stride + p.q_start[b] + i0 + r] =
        any ? m[r] + std::log(l[r]) : kNegInf;
  }
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
  float o[512];
  for (int64_t r = 0; r < kBlockQ; ++r) {
    if (r >= rows) {
      std::fill(qt + r * dp, qt + (r + 1) * dp, 0.f);
      std::fill(dot + r * dp, dot + (r + 1) * dp, 0.f);
      lr[r] = kNegInf;
      dr[r] = 0.f;
      continue;
    }
    load_row(q, offset(q, p.q_start, b, i0 + r, h), d, dp, p.scale, qt + r * dp);
    load_row(grad_out, offset(grad_out, p.q_start, b, i0 + r, h), d, dp, 1.f, dot + r * dp);
    load_row(out, offset(out, p.q_start, b, i0 + r, h), d, dp, 1.f, o);
    const int64_t li = b * p.lse_batch_stride + h * p.lse_head_stride + p.q_start[b] + i0 + r;
    lr[r] = lse[li];
    dr[r] = dot_row(dot + r * dp, o, dp) - (grad_lse != nullptr ? grad_lse[li] : 0.f);
  }
}

void backward_blocks(const Problem& p, const float* q_tiles, const float* do_tiles, const float* lse_rows,
                     const float* delta_rows, const float* k_rows, const float* k_t, const float* v_t,
                     const View& dk, const View& dv, int64_t b, int64_t g, int64_t kb_begin, int64_t kb_end,
                     float* dq_acc, float* ws) {
  const int64_t dp = p.dp, d = p.head_dim;
  const int64_t qlen = p.q_len[b], klen = p.k_len[b], off = klen - qlen;
  float* s = ws;                          // kBlockQ x kBlockK: P
  float* dpm = s + kBlockQ * kBlockK;     // kBlockQ x kBlockK: dP, then dS
  float* dk_acc = dpm + kBlockQ * kBlockK;  // kBlockK x dp
  float* dv_acc = dk_acc + kBlockK * dp;  // kBlockK x dp
  float* tmp = dv_acc + kBlockK * dp;     // dp

  for (int64_t kb = kb_begin; kb < kb_end; ++kb) {
    const int64_t j0 = kb * kBlockK, krows = std::min(kBlockK, klen - j0);
    const int64_t tile = p.k_tile(g, b, kb);
    std::fill(dk_acc, dk_acc + kBlockK * dp, 0.f);
    std::fill(dv_acc, dv_acc + kBlockK * dp, 0.f);
    // The queries that see at least one key of this block.
    int64_t i_lo = 0, i_hi = qlen - 1;
    if (p.window_right >= 0) i_lo = std::max(i_lo, j0 - off - p.window_right);
    if (p.window_left >= 0) i_hi = std::min(i_hi, j0 + krows - 1 - off + p.window_left);
    for (int64_t h = g * p.group(); h < (g + 1) * p.group() && i_lo <= i_hi; ++h) {
      for (int64_t qb = i_lo / kBlockQ; qb <= i_hi / kBlockQ; ++qb) {
        const int64_t i0 = qb * kBlockQ, rows = std::min(kBlockQ, qlen - i0), mr = round_up(rows, 4);
        const float* qt = q_tiles + p.q_tile(h, b, qb);
        const float* dot = do_tiles + p.q_tile(h, b, qb);
        const float* lr = lse_rows + p.q_row(h, b, qb);
        const float* dr = delta_rows + p.q_row(h, b, qb);
        gemm_acc(mr, kBlockK, dp, qt, dp, 1, k_t + tile, kBlockK, s, kBlockK, true);  // S
        const bool full = block_fully_visible(p, i0, i0 + rows - 1, j0, qlen, klen);
        if (!full)
          for (int64_t r = 0; r < rows; ++r) mask_row(p, s + r * kBlockK, i0 + r, j0, qlen, klen);
        exp_tile(s, rows, mr, lr);  // P
        gemm_acc(kBlockK, dp, mr, s, 1, kBlockK, dot, dp, dv_acc, dp, false);            // dV += P^T dO
        gemm_acc(mr, kBlockK, dp, dot, dp, 1, v_t + tile, kBlockK, dpm, kBlockK, true);  // dP = dO V^T
        ds_tile(s, dpm, mr, dr);  // dS = P * (dP - delta)
        gemm_acc(kBlockK, dp, mr, dpm, 1, kBlockK, qt, dp, dk_acc, dp, false);  // dK += dS^T (scale Q)
        gemm_acc(mr, dp, kBlockK, dpm, kBlockK, 1, k_rows + tile, dp, dq_acc + p.q_tile(h, b, qb), dp,
                 false);  // dQ += dS K
      }
    }
    for (int64_t r = 0; r < krows; ++r) {
      store_row(dk, offset(dk, p.k_start, b, j0 + r, g), d, dk_acc + r * dp, 1.f, tmp);
      store_row(dv, offset(dv, p.k_start, b, j0 + r, g), d, dv_acc + r * dp, 1.f, tmp);
    }
  }
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
