// W8A16 on AVX512-BF16 CPUs: out = x @ (w * scale)^T + bias with vdpbf16ps.
//
// What it computes: x as bf16, one plane (bf16 x, exact) or two (x = hi + lo, both bf16: exact for fp16 x,
// 16 significant bits of fp32 x); the int8 weights converted to bf16 in registers (exact: |w| <= 128 has at
// most 8 significant bits); the bf16 x bf16 products are exact in fp32 and summed in fp32 by vdpbf16ps
// (denormal bf16 inputs count as zero). The scale multiplies the fp32 sums: once per output per channel, once
// per group of a multiple of 32 columns (running totals), so the weights themselves are never rounded.
//
// Layout: dot products along k of x rows and weight rows (nn.Linear (N, K), unpacked), 32 k per step, tiles of
// up to 4 rows x 4 weight rows (horizontal sums once at the end). 16 weight rows at a time are converted to bf16
// once into a per-thread buffer that every row tile then reads in k slabs of 1024 (the conversion costs about
// as much as a 4-row tile's products, so it is done once per call, not per row tile). Made for more than a few
// rows of x: with 1-4 rows the fp32 streaming kernels (int8_weight_kernels.cpp) are as fast or faster here.
//
// Bound: vdpbf16ps does 32 multiply-adds per instruction, vpdpbusd (W8A8) 64, at about the same rate, so where
// the products dominate (m >= 16) this reaches at most about half of an int8 GEMM's speed.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "cpu/int8_kernels.h"
#include "cpu/int8_vnni_asm.h"

namespace fastlm::cpu {
namespace {

constexpr int kNr = 4;            // weight rows (output columns) per tile
constexpr int kMaxRows = 4;       // x rows per tile: 16 accumulators (2 with group scales: 8 + 8 running totals)
constexpr int kMaxRowsGrouped = 2;
constexpr int64_t kPanel = 16;    // weight rows converted together
constexpr int64_t kSlab = 1024;   // k per slab (a multiple of 32)
constexpr int64_t kSkew = 32;     // bf16 elements between buffer rows beyond the slab: no 4k aliasing

int64_t padded(int64_t k) { return (k + 31) / 32 * 32; }

#define FASTLM_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// 32 int8 weights -> 32 bf16 in k order.
FASTLM_BF16_TARGET inline __m512i to_bf16(__m256i bytes) {
  const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(bytes)));
  const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(bytes, 1)));
  return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);  // hi's elements go to the upper half
}

FASTLM_BF16_TARGET inline __mmask32 tail_mask(int64_t left) {
  return left >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << left) - 1);
}

// Columns [p0, p1) of weight rows [c0, c0 + rows) as bf16 into buf (rows of stride elements, zero past k).
FASTLM_BF16_TARGET void convert_rows(const Int8WeightGemmArgs& g, int64_t c0, int64_t rows, int64_t p0, int64_t p1,
                                     uint16_t* buf, int64_t stride) {
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* w = g.w + (c0 + r) * g.ldw;
    uint16_t* dst = buf + r * stride - p0;
    int64_t p = p0;
    for (; p + 32 <= p1; p += 32) {  // plain loads: masked loads that miss the cache run about 3x slower here
      if ((p & 63) == 0) _mm_prefetch(reinterpret_cast<const char*>(w + p + 512), _MM_HINT_T0);
      _mm512_storeu_si512(dst + p, to_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + p))));
    }
    if (p < p1) _mm512_storeu_si512(dst + p, to_bf16(_mm256_maskz_loadu_epi8(tail_mask(p1 - p), w + p)));
  }
}

// One step of 32 k: acc[i][j] += x rows . weight rows (both planes of x with LO). MASKED: the k tail, x loads
// masked (only there: with masked loads in the loop GCC 12 stores every accumulator to the stack each step).
template <int MR, bool LO, bool MASKED>
FASTLM_BF16_TARGET __attribute__((always_inline)) inline void step(__m512 (&acc)[MR][kNr], const uint16_t* const (&xh)[MR],
                                                                    const uint16_t* const (&xl)[MR],
                                                                    const uint16_t* const (&br)[kNr], int64_t p,
                                                                    __mmask32 mask) {
  __m512i wv[kNr];
  for (int j = 0; j < kNr; ++j) wv[j] = _mm512_loadu_si512(br[j] + p);  // zero past k
  for (int i = 0; i < MR; ++i) {
    const __m512i xv = MASKED ? _mm512_maskz_loadu_epi16(mask, xh[i] + p) : _mm512_loadu_si512(xh[i] + p);
    for (int j = 0; j < kNr; ++j) acc[i][j] = dpbf16(acc[i][j], xv, wv[j]);
    if (LO) {
      const __m512i xlv = MASKED ? _mm512_maskz_loadu_epi16(mask, xl[i] + p) : _mm512_loadu_si512(xl[i] + p);
      for (int j = 0; j < kNr; ++j) acc[i][j] = dpbf16(acc[i][j], xlv, wv[j]);
    }
  }
}

// What one tile call covers: outputs [m0, m0 + mr) x [n0, n0 + nr), k in [p0, p1). x rows past mr repeat the
// last one, weight rows past nr too (their sums are dropped), so every tile runs at its full width. buf: the
// weight rows as bf16 (convert_rows), `stride` apart. part: where the running sums wait between k slabs
// (MR x kNr vectors); the last slab writes the outputs.
struct Span {
  int64_t m0;
  int mr;
  int64_t n0;
  int nr;
  const uint16_t* buf;
  int64_t stride;
  int64_t p0, p1;
  float* part;
};

// LO: x has a second plane. GROUPED: a scale per group of g.group_size (a multiple of 32
// dividing the slab), applied to each group's sums (running totals `tot`).
template <int MR, bool LO, bool GROUPED>
FASTLM_BF16_TARGET void tile(const Int8WeightGemmArgs& g, const Span& s) {
  const uint16_t* xh[MR];
  const uint16_t* xl[MR];
  for (int i = 0; i < MR; ++i) {
    const int64_t row = s.m0 + std::min(i, s.mr - 1);
    xh[i] = g.x_bf16[0] + row * g.ldx;
    xl[i] = LO ? g.x_bf16[1] + row * g.ldx : nullptr;
  }
  const uint16_t* br[kNr];
  for (int j = 0; j < kNr; ++j) br[j] = s.buf + std::min(j, s.nr - 1) * s.stride;
  const bool first = s.p0 == 0, last = s.p1 == g.k;
  __m512 acc[MR][kNr], tot[MR][kNr];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNr; ++j) {
      acc[i][j] = tot[i][j] = _mm512_setzero_ps();
      if (!first) (GROUPED ? tot : acc)[i][j] = _mm512_loadu_ps(s.part + (i * kNr + j) * 16);
    }

  const int64_t groups = g.k / g.group_size;
  int64_t fold_at = s.p0 + g.group_size, gi = s.p0 / g.group_size;
  int64_t p = s.p0;
  for (; p + 32 <= s.p1; p += 32) {
    step<MR, LO, false>(acc, xh, xl, br, p, 0);
    if (GROUPED && p + 32 == fold_at) {  // no k tail: 32 divides group_size
      for (int j = 0; j < kNr; ++j) {
        const __m512 sc = _mm512_set1_ps(g.w_scale[(s.n0 + std::min(j, s.nr - 1)) * groups + gi]);
        for (int i = 0; i < MR; ++i) {
          tot[i][j] = _mm512_fmadd_ps(acc[i][j], sc, tot[i][j]);
          acc[i][j] = _mm512_setzero_ps();
        }
      }
      fold_at += g.group_size, ++gi;
    }
  }
  if (p < s.p1) step<MR, LO, true>(acc, xh, xl, br, p, tail_mask(s.p1 - p));
  if (!last) {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < kNr; ++j) _mm512_storeu_ps(s.part + (i * kNr + j) * 16, GROUPED ? tot[i][j] : acc[i][j]);
    return;
  }

  // Sums over the whole tile first (constant indices: indexing the registers by mr / nr would make GCC keep
  // the accumulators in memory, stored on every step).
  float sums[MR][kNr];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNr; ++j) sums[i][j] = _mm512_reduce_add_ps(GROUPED ? tot[i][j] : acc[i][j]);
  for (int i = 0; i < s.mr; ++i) {
    float* out = g.out + (s.m0 + i) * g.ldo + s.n0;
    for (int j = 0; j < s.nr; ++j) {
      const float v = GROUPED ? sums[i][j] : sums[i][j] * g.w_scale[s.n0 + j];
      out[j] = v + (g.bias ? g.bias[s.n0 + j] : 0.f);
    }
  }
}

using TileFn = void (*)(const Int8WeightGemmArgs&, const Span&);

template <bool LO, bool GROUPED>
TileFn pick_rows(int mr) {
  switch (mr) {
    case 1: return &tile<1, LO, GROUPED>;
    case 2: return &tile<2, LO, GROUPED>;
    case 3: return GROUPED ? nullptr : &tile<3, LO, GROUPED>;
    default: return GROUPED ? nullptr : &tile<4, LO, GROUPED>;
  }
}

TileFn pick(bool lo, bool grouped, int mr) {
  if (lo) return grouped ? pick_rows<true, true>(mr) : pick_rows<true, false>(mr);
  return grouped ? pick_rows<false, true>(mr) : pick_rows<false, false>(mr);
}

}  // namespace

bool int8_weight_bf16_supported() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool ok = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl");
  return ok;
#else
  return false;
#endif
}

bool int8_weight_bf16_fits(int64_t k, int64_t group_size) { return group_size == k || group_size % 32 == 0; }

void int8_weight_gemm_bf16(const Int8WeightGemmArgs& g, int64_t n0, int64_t n1) {
  const bool lo = g.x_bf16[1] != nullptr, grouped = g.group_size != g.k;
  const int max_rows = grouped ? kMaxRowsGrouped : kMaxRows;
  // A panel of kPanel weight rows converted once (whole rows: one long stream each), then
  // k slabs, so that a tile's x rows and weight rows stay in L1 (whole rows of K = 4096 came from L2 each step).
  const int64_t slab = grouped ? std::max(g.group_size, kSlab / g.group_size * g.group_size) : kSlab;
  const int64_t stride = padded(g.k) + kSkew;
  const int64_t tiles = (g.m + max_rows - 1) / max_rows;
  constexpr int64_t kPartFloats = kMaxRows * kNr * 16;
  thread_local std::vector<uint16_t> buf;
  thread_local std::vector<float> part;
  buf.resize(static_cast<size_t>(kPanel * stride));
  part.resize(static_cast<size_t>(tiles * (kPanel / kNr) * kPartFloats));
  const int64_t calls = tiles * ((g.k + slab - 1) / slab) * (kPanel / kNr);  // tile calls per panel
  for (int64_t cb = n0; cb < n1; cb += kPanel) {
    const int64_t cols = std::min(kPanel, n1 - cb);
    convert_rows(g, cb, cols, 0, g.k, buf.data(), stride);
    // The next panel's weight rows are fetched into L2 while this one computes (spread over its tile calls):
    // the conversion then reads L2, not DRAM.
    const int64_t next_cols = std::max<int64_t>(0, std::min(kPanel, n1 - cb - kPanel));
    const char* next = reinterpret_cast<const char*>(g.w + (cb + kPanel) * g.ldw);
    const int64_t next_bytes = next_cols == 0 ? 0 : (next_cols - 1) * g.ldw + g.k;
    const int64_t per_call = (next_bytes + calls * 64 - 1) / (calls * 64) * 64;
    int64_t fetched = 0;
    for (int64_t p0 = 0; p0 < g.k; p0 += slab) {
      const int64_t p1 = std::min(g.k, p0 + slab);
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t m0 = t * max_rows;
        const int mr = static_cast<int>(std::min<int64_t>(max_rows, g.m - m0));
        const TileFn fn = pick(lo, grouped, mr);
        for (int64_t c = cb; c < cb + cols; c += kNr) {
          const int64_t cg = (c - cb) / kNr;
          for (const int64_t end = std::min(next_bytes, fetched + per_call); fetched < end; fetched += 64) {
            _mm_prefetch(next + fetched, _MM_HINT_T1);
          }
          fn(g, Span{m0, mr, c, static_cast<int>(std::min<int64_t>(kNr, cb + cols - c)), buf.data() + (c - cb) * stride,
                     stride, p0, p1, part.data() + (t * (kPanel / kNr) + cg) * kPartFloats});
        }
      }
    }
  }
}

}  // namespace fastlm::cpu
