// W8A16 on the CPU: out = x @ (w * scale)^T + bias with x already in fp32, int8 weights dequantized
// on the fly (int8 -> fp32, times the group's scale) inside register tiles of dot products along k.
// Made for small m (decoding), where reading the int8 weights once is the cost.
// GCC 12's AVX-512 headers (_mm512_reduce_*, masked loads) trip -Wuninitialized false positives.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>

#include "cpu/int8_kernels.h"

namespace fastlm::cpu {
namespace {

constexpr int kMaxTile = 4;
using TileFn = void (*)(const Int8WeightGemmArgs&, int64_t m0, int64_t n0);

// Per channel (one group), the vector paths leave the scale out of the k loop (one multiply less
// per weight) and apply it to the sums here: `scaled_sums` says the sums still need it.
void store_tile(const Int8WeightGemmArgs& g, int64_t m0, int64_t n0, int mr, int nr, const float acc[kMaxTile][kMaxTile],
                bool scaled_sums = false) {
  for (int i = 0; i < mr; ++i) {
    float* out = g.out + (m0 + i) * g.ldo + n0;
    for (int j = 0; j < nr; ++j) {
      const float v = scaled_sums ? acc[i][j] * g.w_scale[n0 + j] : acc[i][j];
      out[j] = v + (g.bias ? g.bias[n0 + j] : 0.f);
    }
  }
}

// Scalar accumulation of x[i, p:p1] . (w[j, p:p1] * s[j]) into acc (k tails and the scalar path).
template <int MR, int NR>
inline void scalar_part(const Int8WeightGemmArgs& g, int64_t m0, int64_t n0, int64_t p, int64_t p1, const float* s,
                        float acc[kMaxTile][kMaxTile]) {
  for (int i = 0; i < MR; ++i) {
    const float* x = g.x + (m0 + i) * g.ldx;
    for (int j = 0; j < NR; ++j) {
      const int8_t* w = g.w + (n0 + j) * g.ldw;
      float sum = 0.f;
      for (int64_t q = p; q < p1; ++q) sum += x[q] * (static_cast<float>(w[q]) * s[j]);
      acc[i][j] += sum;
    }
  }
}

template <int MR, int NR>
void tile_scalar(const Int8WeightGemmArgs& g, int64_t m0, int64_t n0) {
  float acc[kMaxTile][kMaxTile] = {};
  const int64_t groups = g.k / g.group_size;
  for (int64_t gi = 0; gi < groups; ++gi) {
    float s[NR];
    for (int j = 0; j < NR; ++j) s[j] = g.w_scale[(n0 + j) * groups + gi];
    scalar_part<MR, NR>(g, m0, n0, gi * g.group_size, (gi + 1) * g.group_size, s, acc);
  }
  store_tile(g, m0, n0, MR, NR, acc);
}

template <int MR, int NR>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void tile_avx512(const Int8WeightGemmArgs& g, int64_t m0,
                                                                       int64_t n0) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  const float* x = g.x + m0 * g.ldx;
  const int8_t* w = g.w + n0 * g.ldw;
  const int64_t groups = g.k / g.group_size;
  const bool per_channel = groups == 1;
  for (int64_t gi = 0; gi < groups; ++gi) {
    __m512 s[NR];
    for (int j = 0; j < NR; ++j) s[j] = _mm512_set1_ps(per_channel ? 1.f : g.w_scale[(n0 + j) * groups + gi]);
    const int64_t p1 = (gi + 1) * g.group_size;
    int64_t p = gi * g.group_size;
    // Whole cache lines of each weight row, prefetched 8 lines ahead: the rows stream from L3 / DRAM at
    // small m, and NR rows x several threads are more streams than the hardware prefetcher follows.
    for (; p + 64 <= p1; p += 64) {
      if (p + 512 < g.k)
        for (int j = 0; j < NR; ++j) _mm_prefetch(reinterpret_cast<const char*>(w + j * g.ldw + p + 512), _MM_HINT_T0);
      for (int u = 0; u < 64; u += 16) {
        __m512 wv[NR];
        for (int j = 0; j < NR; ++j) {
          const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + j * g.ldw + p + u));
          wv[j] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
          if (!per_channel) wv[j] = _mm512_mul_ps(wv[j], s[j]);
        }
        for (int i = 0; i < MR; ++i) {
          const __m512 xv = _mm512_loadu_ps(x + i * g.ldx + p + u);
          for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
        }
      }
    }
    for (; p < p1; p += 16) {
      const __mmask16 mask = p + 16 <= p1 ? __mmask16(0xffff) : __mmask16((1u << (p1 - p)) - 1);
      __m512 wv[NR];
      for (int j = 0; j < NR; ++j) {
        const __m128i bytes = _mm_maskz_loadu_epi8(mask, w + j * g.ldw + p);
        wv[j] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
        if (!per_channel) wv[j] = _mm512_mul_ps(wv[j], s[j]);
      }
      for (int i = 0; i < MR; ++i) {
        const __m512 xv = _mm512_maskz_loadu_ps(mask, x + i * g.ldx + p);
        for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
      }
    }
  }
  float out[kMaxTile][kMaxTile];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out[i][j] = _mm512_reduce_add_ps(acc[i][j]);
  store_tile(g, m0, n0, MR, NR, out, per_channel);
}

__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int MR, int NR>
__attribute__((target("avx2,fma"))) void tile_avx2(const Int8WeightGemmArgs& g, int64_t m0, int64_t n0) {
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  float tail[kMaxTile][kMaxTile] = {};
  const float* x = g.x + m0 * g.ldx;
  const int8_t* w = g.w + n0 * g.ldw;
  const int64_t groups = g.k / g.group_size;
  const bool per_channel = groups == 1;
  for (int64_t gi = 0; gi < groups; ++gi) {
    float sc[NR];
    __m256 s[NR];
    for (int j = 0; j < NR; ++j) {
      sc[j] = per_channel ? 1.f : g.w_scale[(n0 + j) * groups + gi];
      s[j] = _mm256_set1_ps(sc[j]);
    }
    const int64_t p1 = (gi + 1) * g.group_size;
    int64_t p = gi * g.group_size;
    for (; p + 8 <= p1; p += 8) {
      __m256 wv[NR];
      for (int j = 0; j < NR; ++j) {
        const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + j * g.ldw + p));
        wv[j] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
        if (!per_channel) wv[j] = _mm256_mul_ps(wv[j], s[j]);
      }
      for (int i = 0; i < MR; ++i) {
        const __m256 xv = _mm256_loadu_ps(x + i * g.ldx + p);
        for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
      }
    }
    if (p < p1) scalar_part<MR, NR>(g, m0, n0, p, p1, sc, tail);
  }
  float out[kMaxTile][kMaxTile];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out[i][j] = hsum256(acc[i][j]) + tail[i][j];
  store_tile(g, m0, n0, MR, NR, out, per_channel);
}

#define FASTLM_TILE_ROW(F, MR) {&F<MR, 1>, &F<MR, 2>, &F<MR, 3>, &F<MR, 4>}
#define FASTLM_TILE_TABLE(F) \
  {FASTLM_TILE_ROW(F, 1), FASTLM_TILE_ROW(F, 2), FASTLM_TILE_ROW(F, 3), FASTLM_TILE_ROW(F, 4)}

const TileFn kScalarTiles[4][4] = FASTLM_TILE_TABLE(tile_scalar);
const TileFn kAvx512Tiles[4][4] = FASTLM_TILE_TABLE(tile_avx512);
const TileFn kAvx2Tiles[4][4] = FASTLM_TILE_TABLE(tile_avx2);

}  // namespace

void int8_weight_gemm(Int8Path path, const Int8WeightGemmArgs& g, int64_t n0, int64_t n1) {
  const TileFn(*tiles)[4] = kScalarTiles;
  int mr_max = 4, nr_max = 4;
  switch (path) {
    case Int8Path::kAmx:
    case Int8Path::kAvx512Vnni: tiles = kAvx512Tiles; break;
    case Int8Path::kAvxVnni:
    case Int8Path::kAvx2: tiles = kAvx2Tiles, mr_max = 2; break;  // 16 ymm registers
    default: break;
  }
  const int64_t block = std::max<int64_t>(nr_max, (int64_t{1} << 16) / std::max<int64_t>(g.k, 1) / nr_max * nr_max);
  for (int64_t nb = n0; nb < n1; nb += block) {
    const int64_t nb_end = std::min(n1, nb + block);
    for (int64_t m0 = 0; m0 < g.m; m0 += mr_max) {
      const int mr = static_cast<int>(std::min<int64_t>(mr_max, g.m - m0));
      for (int64_t j0 = nb; j0 < nb_end; j0 += nr_max) {
        const int nr = static_cast<int>(std::min<int64_t>(nr_max, nb_end - j0));
        tiles[mr - 1][nr - 1](g, m0, j0);
      }
    }
  }
}

}  // namespace fastlm::cpu
