// int8 x int8 -> int32 GEMM, out = a @ w^T, as register tiles of dot products along k.
//
// VNNI (vpdpbusd) multiplies unsigned by signed bytes, so w is offset to unsigned (w ^ 0x80 = w + 128)
// and the extra 128 * sum_k a[m, k] is subtracted at the end: exact for every int8 value.
// AVX2 (vpmaddubsw, u8 x s8 with int16 pair sums that saturate) uses |w| x sign(a, w): exact when a
// has no -128 (then |pair sum| <= 2 * 128 * 127 < 2^15); otherwise an exact widening (int16) variant runs.
// k tails: masked loads (AVX-512) or zero-padded copies (AVX2), zeros add nothing in either trick.
// GCC 12's AVX-512 headers (_mm512_reduce_*, masked loads) trip -Wuninitialized false positives.
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

constexpr int kMaxTile = 4;
constexpr int64_t kPrefetchBytes = 512;  // 8 cache lines ahead along each weight row
using TileFn = void (*)(const Int8GemmArgs&, int64_t m0, int64_t n0);

void store_tile(const Int8GemmArgs& g, int64_t m0, int64_t n0, int mr, int nr, const int32_t acc[kMaxTile][kMaxTile]) {
  for (int i = 0; i < mr; ++i) {
    const int64_t m = m0 + i;
    if (g.a_scale == nullptr) {
      int32_t* out = static_cast<int32_t*>(g.out) + m * g.ldo + n0;
      for (int j = 0; j < nr; ++j) out[j] = acc[i][j];
      continue;
    }
    float* out = static_cast<float*>(g.out) + m * g.ldo + n0;
    const float as = g.a_scale[m];
    // One explicit FMA for the bias: the same bits on every path (and in int8_packed_gemm), whatever
    // the compiler would contract.
    for (int j = 0; j < nr; ++j) {
      const float v = static_cast<float>(acc[i][j]) * as;
      out[j] = g.bias ? std::fma(v, g.b_scale[n0 + j], g.bias[n0 + j]) : v * g.b_scale[n0 + j];
    }
  }
}

// ---------------------------------------------------------------- scalar

template <int MR, int NR>
void tile_scalar(const Int8GemmArgs& g, int64_t m0, int64_t n0) {
  int32_t acc[kMaxTile][kMaxTile] = {};
  for (int i = 0; i < MR; ++i) {
    const int8_t* a = g.a + (m0 + i) * g.lda;
    for (int j = 0; j < NR; ++j) {
      const int8_t* w = g.w + (n0 + j) * g.ldw;
      int32_t s = 0;
      for (int64_t k = 0; k < g.k; ++k) s += static_cast<int32_t>(a[k]) * static_cast<int32_t>(w[k]);
      acc[i][j] = s;
    }
  }
  store_tile(g, m0, n0, MR, NR, acc);
}

// ---------------------------------------------------------------- AVX-512 VNNI (64 bytes a step)

template <int MR, int NR>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void tile_avx512_vnni(const Int8GemmArgs& g, int64_t m0,
                                                                              int64_t n0) {
  __m512i acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const int8_t* a = g.a + m0 * g.lda;
  const int8_t* w = g.w + n0 * g.ldw;
  const int64_t k = g.k;
  int64_t p = 0;
  for (; p + 64 <= k; p += 64) {
    // The weight rows stream from L3 / DRAM at small m: NR row streams per thread are more than the
    // hardware prefetcher follows, so each row is prefetched kPrefetchBytes ahead (past the row's end
    // it touches the next row, which is harmless).
    for (int j = 0; j < NR; ++j)
      _mm_prefetch(reinterpret_cast<const char*>(w + j * g.ldw + p + kPrefetchBytes), _MM_HINT_T0);
    __m512i wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = _mm512_xor_si512(_mm512_loadu_si512(w + j * g.ldw + p), flip);
    for (int i = 0; i < MR; ++i) {
      const __m512i av = _mm512_loadu_si512(a + i * g.lda + p);
      for (int j = 0; j < NR; ++j) acc[i][j] = dpbusd(acc[i][j], wv[j], av);
    }
  }
  if (p < k) {
    const __mmask64 mask = ~0ULL >> (64 - (k - p));
    __m512i wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, w + j * g.ldw + p), flip);
    for (int i = 0; i < MR; ++i) {
      const __m512i av = _mm512_maskz_loadu_epi8(mask, a + i * g.lda + p);
      for (int j = 0; j < NR; ++j) acc[i][j] = dpbusd(acc[i][j], wv[j], av);
    }
  }
  int32_t out[kMaxTile][kMaxTile];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out[i][j] = _mm512_reduce_add_epi32(acc[i][j]) - 128 * g.a_rowsum[m0 + i];
  store_tile(g, m0, n0, MR, NR, out);
}

// ---------------------------------------------------------------- 256-bit paths (32 bytes a step)

// Copies the k tail of `rows` rows into zero-padded 32-byte blocks.
inline void pad_tail(const int8_t* src, int64_t ld, int rows, int64_t p, int64_t k, int8_t (*dst)[32]) {
  for (int r = 0; r < rows; ++r) {
    std::memset(dst[r], 0, 32);
    std::memcpy(dst[r], src + r * ld + p, static_cast<size_t>(k - p));
  }
}

__attribute__((target("avx2"))) inline int32_t hsum256(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

// Runs a tile's 32-byte steps over k (a macro: the loop must be compiled for the caller's target).
// `step` is a functor holding the accumulators.
#define FASTLM_RUN_256(MR, NR, g, m0, n0, step)                          \
  do {                                                                   \
    const int8_t* a_ = (g).a + (m0) * (g).lda;                           \
    const int8_t* w_ = (g).w + (n0) * (g).ldw;                           \
    int64_t p_ = 0;                                                      \
    for (; p_ + 32 <= (g).k; p_ += 32) {                                 \
      for (int j_ = 0; j_ < NR; ++j_) /* as in tile_avx512_vnni */       \
        _mm_prefetch(reinterpret_cast<const char*>(w_ + j_ * (g).ldw + p_ + kPrefetchBytes), _MM_HINT_T0); \
      step(a_ + p_, (g).lda, w_ + p_, (g).ldw);                          \
    }                                                                    \
    if (p_ < (g).k) {                                                    \
      alignas(32) int8_t at_[MR][32];                                    \
      alignas(32) int8_t wt_[NR][32];                                    \
      pad_tail(a_, (g).lda, MR, p_, (g).k, at_);                         \
      pad_tail(w_, (g).ldw, NR, p_, (g).k, wt_);                         \
      step(&at_[0][0], 32, &wt_[0][0], 32);                              \
    }                                                                    \
  } while (0)

template <int MR, int NR>
struct Avx2SignStep {
  __m256i acc[MR][NR];
  __attribute__((target("avx2"), always_inline)) inline void operator()(const int8_t* a, int64_t lda, const int8_t* w,
                                                                          int64_t ldw) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i wv[NR], wabs[NR];
    for (int j = 0; j < NR; ++j) {
      wv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * ldw));
      wabs[j] = _mm256_abs_epi8(wv[j]);
    }
    for (int i = 0; i < MR; ++i) {
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i * lda));
      for (int j = 0; j < NR; ++j) {
        const __m256i pairs = _mm256_maddubs_epi16(wabs[j], _mm256_sign_epi8(av, wv[j]));
        acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(pairs, ones));
      }
    }
  }
};

template <int MR, int NR>
struct Avx2WideStep {  // int8 -> int16, exact for -128 too
  __m256i acc[MR][NR];
  __attribute__((target("avx2"), always_inline)) inline void operator()(const int8_t* a, int64_t lda, const int8_t* w,
                                                                          int64_t ldw) {
    for (int h = 0; h < 32; h += 16) {
      __m256i wv[NR];
      for (int j = 0; j < NR; ++j)
        wv[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + j * ldw + h)));
      for (int i = 0; i < MR; ++i) {
        const __m256i av = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i * lda + h)));
        for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(av, wv[j]));
      }
    }
  }
};

template <int MR, int NR>
struct AvxVnniStep {  // (w + 128) x a with vpdpbusd (VEX encoding)
  __m256i acc[MR][NR];
  __attribute__((target("avx2,avxvnni"), always_inline)) inline void operator()(const int8_t* a, int64_t lda,
                                                                                  const int8_t* w, int64_t ldw) {
    const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
    __m256i wv[NR];
    for (int j = 0; j < NR; ++j)
      wv[j] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * ldw)), flip);
    for (int i = 0; i < MR; ++i) {
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i * lda));
      for (int j = 0; j < NR; ++j) acc[i][j] = dpbusd_vex(acc[i][j], wv[j], av);
    }
  }
};

template <int MR, int NR, template <int, int> class Step, bool kOffset>
__attribute__((target("avx2"))) void tile_256(const Int8GemmArgs& g, int64_t m0, int64_t n0) {
  Step<MR, NR> step;
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) step.acc[i][j] = _mm256_setzero_si256();
  FASTLM_RUN_256(MR, NR, g, m0, n0, step);
  int32_t out[kMaxTile][kMaxTile];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out[i][j] = hsum256(step.acc[i][j]) - (kOffset ? 128 * g.a_rowsum[m0 + i] : 0);
  store_tile(g, m0, n0, MR, NR, out);
}

template <int MR, int NR>
__attribute__((target("avx2,avxvnni"))) void tile_avx_vnni(const Int8GemmArgs& g, int64_t m0, int64_t n0) {
  AvxVnniStep<MR, NR> step;
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) step.acc[i][j] = _mm256_setzero_si256();
  FASTLM_RUN_256(MR, NR, g, m0, n0, step);
  int32_t out[kMaxTile][kMaxTile];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out[i][j] = hsum256(step.acc[i][j]) - 128 * g.a_rowsum[m0 + i];
  store_tile(g, m0, n0, MR, NR, out);
}

// ---------------------------------------------------------------- tile tables and the driver

#define FASTLM_TILE_ROW(F, MR) {&F<MR, 1>, &F<MR, 2>, &F<MR, 3>, &F<MR, 4>}
#define FASTLM_TILE_TABLE(F) \
  {FASTLM_TILE_ROW(F, 1), FASTLM_TILE_ROW(F, 2), FASTLM_TILE_ROW(F, 3), FASTLM_TILE_ROW(F, 4)}

template <int MR, int NR>
void tile_avx2_sign(const Int8GemmArgs& g, int64_t m0, int64_t n0) {
  tile_256<MR, NR, Avx2SignStep, false>(g, m0, n0);
}
template <int MR, int NR>
void tile_avx2_wide(const Int8GemmArgs& g, int64_t m0, int64_t n0) {
  tile_256<MR, NR, Avx2WideStep, false>(g, m0, n0);
}

const TileFn kScalarTiles[4][4] = FASTLM_TILE_TABLE(tile_scalar);
const TileFn kAvx512VnniTiles[4][4] = FASTLM_TILE_TABLE(tile_avx512_vnni);
const TileFn kAvxVnniTiles[4][4] = FASTLM_TILE_TABLE(tile_avx_vnni);
const TileFn kAvx2SignTiles[4][4] = FASTLM_TILE_TABLE(tile_avx2_sign);
const TileFn kAvx2WideTiles[4][4] = FASTLM_TILE_TABLE(tile_avx2_wide);

}  // namespace

const char* int8_path_name(Int8Path path) {
  switch (path) {
    case Int8Path::kAmx: return "amx";
    case Int8Path::kAvx512Vnni: return "avx512_vnni";
    case Int8Path::kAvxVnni: return "avx_vnni";
    case Int8Path::kAvx2: return "avx2";
    default: return "scalar";
  }
}

bool int8_path_from_name(const char* name, Int8Path* path) {
  for (Int8Path p : {Int8Path::kAmx, Int8Path::kAvx512Vnni, Int8Path::kAvxVnni, Int8Path::kAvx2, Int8Path::kScalar}) {
    if (std::strcmp(name, int8_path_name(p)) == 0) {
      *path = p;
      return true;
    }
  }
  return false;
}

bool int8_path_supported(Int8Path path) {
#if defined(__x86_64__) && defined(__GNUC__)
  switch (path) {
    case Int8Path::kAmx: return int8_amx_supported();
    case Int8Path::kAvx512Vnni:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vnni");
    case Int8Path::kAvxVnni: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avxvnni");
    case Int8Path::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default: return true;
  }
#else
  return path == Int8Path::kScalar;
#endif
}

Int8Path int8_best_path() {
  for (Int8Path p : {Int8Path::kAmx, Int8Path::kAvx512Vnni, Int8Path::kAvxVnni, Int8Path::kAvx2}) {
    if (int8_path_supported(p)) return p;
  }
  return Int8Path::kScalar;
}

void int8_row_stats(const int8_t* a, int64_t lda, int64_t m, int64_t k, int32_t* rowsum, bool* has_min) {
  bool found = false;
  for (int64_t r = 0; r < m; ++r) {
    const int8_t* row = a + r * lda;
    int32_t s = 0;
    int32_t low = 0;
#pragma omp simd reduction(+ : s) reduction(min : low)
    for (int64_t i = 0; i < k; ++i) {
      s += row[i];
      low = row[i] < low ? row[i] : low;
    }
    rowsum[r] = s;
    found = found || low == -128;
  }
  *has_min = found;
}

void int8_gemm(Int8Path path, const Int8GemmArgs& g, int64_t n0, int64_t n1) {
  if (path == Int8Path::kAmx) return int8_gemm_amx(g, n0, n1);
  const TileFn(*tiles)[4] = kScalarTiles;
  int mr_max = 4, nr_max = 4;  // register budget: 32 zmm (AVX-512) or 16 ymm (AVX2)
  switch (path) {
    case Int8Path::kAvx512Vnni: tiles = kAvx512VnniTiles; break;
    case Int8Path::kAvxVnni: tiles = kAvxVnniTiles, mr_max = 2; break;
    case Int8Path::kAvx2:
      tiles = g.a_has_min ? kAvx2WideTiles : kAvx2SignTiles;
      mr_max = g.m == 1 ? 1 : 2, nr_max = g.m == 1 ? 4 : 2;
      break;
    default: break;
  }
  // Blocks of w rows stay in cache while every row tile of a passes over them.
  const int64_t block = std::max<int64_t>(nr_max, (int64_t{1} << 18) / std::max<int64_t>(g.k, 1) / nr_max * nr_max);
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
