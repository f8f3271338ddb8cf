// 2:4 sparse GEMM kernels (see sparse24_kernel.h): for few rows of x, AVX-512 permutes each 4 groups of
// weights into 16 dense columns in a register and AVX2 gathers the x value of each kept
// weight (8 groups at a time); for many rows, a panel path
// (each kept weight is broadcast and multiplies a vector of mb rows of x, read from a panel that stays
// in L1 for a block of groups). AVX-512 and AVX2+FMA by target attributes, chosen at run time; the
// scalar path is the portable fallback. Every path accumulates in fp32.
#include "cpu/sparse24_kernel.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#define FASTLM_SPARSE24_X86 1
#endif

namespace fastlm::cpu {
namespace {

constexpr int64_t kColumnChunk = 256;  // output columns per pass of the panel paths

inline int nibble(const uint8_t* meta_row, int64_t g) { return (meta_row[g >> 1] >> ((g & 1) << 2)) & 0xF; }

// The dot products of groups [g0, groups) of one weight row with one padded row of x.
inline float dot_groups(const float* v, const uint8_t* mt, const float* xr, int64_t g0, int64_t groups) {
  float acc = 0.0f;
  for (int64_t g = g0; g < groups; ++g) {
    const int nb = nibble(mt, g);
    acc += v[2 * g] * xr[4 * g + (nb & 3)] + v[2 * g + 1] * xr[4 * g + (nb >> 2)];
  }
  return acc;
}

void gemm_scalar(const Sparse24Args& a, int64_t n0, int64_t n1) {
  const int64_t kp = 4 * a.groups;
  for (int64_t j = n0; j < n1; ++j) {
    const float* v = a.values + j * 2 * a.groups;
    const uint8_t* mt = a.meta + j * a.meta_stride;
    const float b = a.bias != nullptr ? a.bias[j] : 0.0f;
    for (int64_t i = 0; i < a.m; ++i) a.out[i * a.n + j] = dot_groups(v, mt, a.x + i * kp, 0, a.groups) + b;
  }
}

#ifdef FASTLM_SPARSE24_X86
constexpr int64_t kGatherMaxRows = 8;    // AVX2: the gather path up to this many rows
constexpr int64_t kDenseLanesMaxRows = 8;  // AVX-512: the dense-lanes path up to this many rows
constexpr int64_t kRowBlock = 8;
constexpr int64_t kPrefetchBytes = 4096;

// ---------------------------------------------------------------- AVX-512

// Few rows, AVX-512: every 4 groups of a weight row become 16 dense columns in a register (a masked
// vpermps of the row's values by indices from a table), then one FMA per row of x: a dense GEMV's
// arithmetic with half the weight bytes to read. (vexpandps and gathers are slower on some CPUs.)
struct DenseLanes {
  uint8_t mask[256];   // a meta byte (two groups) -> the 8-column mask of their kept offsets
  uint64_t index[256]; // -> for each of the 8 columns, which of the pair's 4 values it takes (0-3)
  DenseLanes() {
    for (int b = 0; b < 256; ++b) {
      mask[b] = 0;
      index[b] = 0;
      for (int h = 0; h < 2; ++h) {
        const int nb = (b >> (4 * h)) & 0xF, i0 = nb & 3, i1 = nb >> 2;
        mask[b] |= static_cast<uint8_t>(((1 << i0) | (1 << i1)) << (4 * h));
        index[b] |= static_cast<uint64_t>(2 * h) << (8 * (4 * h + i0));
        index[b] |= static_cast<uint64_t>(2 * h + 1) << (8 * (4 * h + i1));
      }
    }
  }
};
const DenseLanes kLanes;

// The 16 dense columns of groups g .. g+3 from meta bytes mb[0], mb[1] and values vals (lanes base .. base+7).
__attribute__((target("avx512f"), always_inline)) inline __m512 dense16(const uint8_t* mb, __m512 vals, int base) {
  const __mmask16 k = static_cast<__mmask16>(kLanes.mask[mb[0]] | (kLanes.mask[mb[1]] << 8));
  const uint64_t b = 0x0101010101010101ull * static_cast<uint64_t>(base);
  const __m128i bytes = _mm_set_epi64x(static_cast<long long>(kLanes.index[mb[1]] + b + 0x0404040404040404ull),
                                       static_cast<long long>(kLanes.index[mb[0]] + b));
  return _mm512_maskz_permutexvar_ps(k, _mm512_cvtepu8_epi32(bytes), vals);
}

// (not _mm512_reduce_add_ps: GCC 12's header warns about an uninitialized value inside it)
__attribute__((target("avx512f"))) inline float hsum512(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float s = 0.0f;
  for (float x : lanes) s += x;
  return s;
}

// Rows r0 .. r0 + M - 1 of x times weight row j (M a compile-time count: the accumulators stay in registers).
template <int M>
__attribute__((target("avx512f"), always_inline)) inline void dense_lanes_rows(const Sparse24Args& a, int64_t j,
                                                                               int64_t r0) {
  const int64_t kp = 4 * a.groups;
  const float* v = a.values + j * 2 * a.groups;
  const uint8_t* mt = a.meta + j * a.meta_stride;
  const float* x = a.x + r0 * kp;
  __m512 acc0[M], acc1[M];  // two chains per row
  for (int i = 0; i < M; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= a.groups; g += 8) {
    // the weights stream through once: non-temporal prefetch, so they do not push the rows of x out of L1
    _mm_prefetch(reinterpret_cast<const char*>(v + 2 * g) + kPrefetchBytes, _MM_HINT_NTA);
    const __m512 vals = _mm512_loadu_ps(v + 2 * g);  // 8 groups x 2 kept weights
    const __m512 w0 = dense16(mt + g / 2, vals, 0), w1 = dense16(mt + g / 2 + 2, vals, 8);
    for (int i = 0; i < M; ++i) {
      const float* xr = x + i * kp + 4 * g;
      acc0[i] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xr), acc0[i]);
      acc1[i] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xr + 16), acc1[i]);
    }
  }
  const float b = a.bias != nullptr ? a.bias[j] : 0.0f;
  for (int i = 0; i < M; ++i)
    a.out[(r0 + i) * a.n + j] =
        hsum512(_mm512_add_ps(acc0[i], acc1[i])) + dot_groups(v, mt, x + i * kp, g, a.groups) + b;
}

__attribute__((target("avx512f"))) void dense_lanes_avx512(const Sparse24Args& a, int64_t n0, int64_t n1) {
  for (int64_t j = n0; j < n1; ++j) {
    for (int64_t r0 = 0; r0 < a.m; r0 += kRowBlock) {  // the weight row is re-read from L1 per block
      switch (std::min(kRowBlock, a.m - r0)) {
        case 1: dense_lanes_rows<1>(a, j, r0); break;
        case 2: dense_lanes_rows<2>(a, j, r0); break;
        case 3: dense_lanes_rows<3>(a, j, r0); break;
        case 4: dense_lanes_rows<4>(a, j, r0); break;
        case 5: dense_lanes_rows<5>(a, j, r0); break;
        case 6: dense_lanes_rows<6>(a, j, r0); break;
        case 7: dense_lanes_rows<7>(a, j, r0); break;
        default: dense_lanes_rows<8>(a, j, r0); break;
      }
    }
  }
}

// Panels of mb = 16 * NV rows; a block of groups whose panel rows take 32 KiB (L1).
template <int NV>
__attribute__((target("avx512f"))) void panel_avx512(const Sparse24Args& a, int64_t n0, int64_t n1, float* acc_t) {
  constexpr int64_t mb = 16 * NV, block = 32768 / (4 * 4 * mb);
  const int64_t kp = 4 * a.groups;
  for (int64_t m0 = 0; m0 < a.m; m0 += mb) {
    const float* panel = a.x + (m0 / mb) * kp * mb;
    for (int64_t c0 = n0; c0 < n1; c0 += kColumnChunk) {  // acc_t of a chunk stays in L2
      const int64_t c1 = std::min(n1, c0 + kColumnChunk);
      for (int64_t g0 = 0; g0 < a.groups; g0 += block) {
        const int64_t g1 = std::min(a.groups, g0 + block);
        for (int64_t j = c0; j < c1; ++j) {
          const float* v = a.values + j * 2 * a.groups;
          const uint8_t* mt = a.meta + j * a.meta_stride;
          float* o = acc_t + (j - c0) * mb;
          // two sets of accumulators (first and second kept weight): one FMA per chain per group
          __m512 c[NV], d[NV];
          for (int q = 0; q < NV; ++q) {
            c[q] = g0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(o + 16 * q);
            d[q] = _mm512_setzero_ps();
          }
          for (int64_t g = g0; g < g1; ++g) {
            const int nb = nibble(mt, g);
            const float* r0 = panel + (4 * g + (nb & 3)) * mb;
            const float* r1 = panel + (4 * g + (nb >> 2)) * mb;
            const __m512 b0 = _mm512_set1_ps(v[2 * g]), b1 = _mm512_set1_ps(v[2 * g + 1]);
            for (int q = 0; q < NV; ++q) {
              c[q] = _mm512_fmadd_ps(b0, _mm512_loadu_ps(r0 + 16 * q), c[q]);
              d[q] = _mm512_fmadd_ps(b1, _mm512_loadu_ps(r1 + 16 * q), d[q]);
            }
          }
          for (int q = 0; q < NV; ++q) _mm512_storeu_ps(o + 16 * q, _mm512_add_ps(c[q], d[q]));
        }
      }
      const int64_t rows = std::min(mb, a.m - m0);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = c0; j < c1; ++j)
          a.out[(m0 + r) * a.n + j] = acc_t[(j - c0) * mb + r] + (a.bias != nullptr ? a.bias[j] : 0.0f);
    }
  }
}

// ---------------------------------------------------------------- AVX2 + FMA

__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) void gather_avx2(const Sparse24Args& a, int64_t n0, int64_t n1) {
  const int64_t kp = 4 * a.groups, m = a.m;
  // slot s of 16 (8 groups x 2): offset bits [2s, 2s + 2) of the 4 meta bytes
  const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m256i base = _mm256_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12);
  const __m256i three = _mm256_set1_epi32(3);
  for (int64_t j = n0; j < n1; ++j) {
    const float* v = a.values + j * 2 * a.groups;
    const uint8_t* mt = a.meta + j * a.meta_stride;
    __m256 acc[kGatherMaxRows];
    for (int64_t i = 0; i < m; ++i) acc[i] = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 8 <= a.groups; g += 8) {
      uint32_t bits;
      std::memcpy(&bits, mt + g / 2, 4);
      const __m256i col = _mm256_add_epi32(base, _mm256_set1_epi32(static_cast<int>(4 * g)));
      const __m256i i0 = _mm256_add_epi32(
          _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(bits & 0xFFFFu)), shifts), three), col);
      const __m256i i1 = _mm256_add_epi32(
          _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(bits >> 16)), shifts), three),
          _mm256_add_epi32(col, _mm256_set1_epi32(16)));
      const __m256 v0 = _mm256_loadu_ps(v + 2 * g), v1 = _mm256_loadu_ps(v + 2 * g + 8);
      for (int64_t i = 0; i < m; ++i) {
        const float* xr = a.x + i * kp;
        acc[i] = _mm256_fmadd_ps(v0, _mm256_i32gather_ps(xr, i0, 4), acc[i]);
        acc[i] = _mm256_fmadd_ps(v1, _mm256_i32gather_ps(xr, i1, 4), acc[i]);
      }
    }
    const float b = a.bias != nullptr ? a.bias[j] : 0.0f;
    for (int64_t i = 0; i < m; ++i)
      a.out[i * a.n + j] = hsum256(acc[i]) + dot_groups(v, mt, a.x + i * kp, g, a.groups) + b;
  }
}

template <int NV>
__attribute__((target("avx2,fma"))) void panel_avx2(const Sparse24Args& a, int64_t n0, int64_t n1, float* acc_t) {
  constexpr int64_t mb = 8 * NV, block = 32768 / (4 * 4 * mb);
  const int64_t kp = 4 * a.groups;
  for (int64_t m0 = 0; m0 < a.m; m0 += mb) {
    const float* panel = a.x + (m0 / mb) * kp * mb;
    for (int64_t c0 = n0; c0 < n1; c0 += kColumnChunk) {
      const int64_t c1 = std::min(n1, c0 + kColumnChunk);
      for (int64_t g0 = 0; g0 < a.groups; g0 += block) {
        const int64_t g1 = std::min(a.groups, g0 + block);
        for (int64_t j = c0; j < c1; ++j) {
          const float* v = a.values + j * 2 * a.groups;
          const uint8_t* mt = a.meta + j * a.meta_stride;
          float* o = acc_t + (j - c0) * mb;
          __m256 c[NV], d[NV];
          for (int q = 0; q < NV; ++q) {
            c[q] = g0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(o + 8 * q);
            d[q] = _mm256_setzero_ps();
          }
          for (int64_t g = g0; g < g1; ++g) {
            const int nb = nibble(mt, g);
            const float* r0 = panel + (4 * g + (nb & 3)) * mb;
            const float* r1 = panel + (4 * g + (nb >> 2)) * mb;
            const __m256 b0 = _mm256_broadcast_ss(v + 2 * g), b1 = _mm256_broadcast_ss(v + 2 * g + 1);
            for (int q = 0; q < NV; ++q) {
              c[q] = _mm256_fmadd_ps(b0, _mm256_loadu_ps(r0 + 8 * q), c[q]);
              d[q] = _mm256_fmadd_ps(b1, _mm256_loadu_ps(r1 + 8 * q), d[q]);
            }
          }
          for (int q = 0; q < NV; ++q) _mm256_storeu_ps(o + 8 * q, _mm256_add_ps(c[q], d[q]));
        }
      }
      const int64_t rows = std::min(mb, a.m - m0);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = c0; j < c1; ++j)
          a.out[(m0 + r) * a.n + j] = acc_t[(j - c0) * mb + r] + (a.bias != nullptr ? a.bias[j] : 0.0f);
    }
  }
}
#endif  // FASTLM_SPARSE24_X86

}  // namespace

const char* sparse24_path_name(Sparse24Path path) {
  switch (path) {
    case Sparse24Path::kAvx512: return "avx512";
    case Sparse24Path::kAvx2: return "avx2";
    default: return "scalar";
  }
}

bool sparse24_path_from_name(const char* name, Sparse24Path* path) {
  for (Sparse24Path p : {Sparse24Path::kAvx512, Sparse24Path::kAvx2, Sparse24Path::kScalar}) {
    if (std::strcmp(name, sparse24_path_name(p)) == 0) {
      *path = p;
      return true;
    }
  }
  return false;
}

bool sparse24_path_supported(Sparse24Path path) {
#ifdef FASTLM_SPARSE24_X86
  switch (path) {
    case Sparse24Path::kAvx512: return __builtin_cpu_supports("avx512f");
    case Sparse24Path::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default: return true;
  }
#else
  return path == Sparse24Path::kScalar;
#endif
}

Sparse24Path sparse24_best_path() {
  for (Sparse24Path p : {Sparse24Path::kAvx512, Sparse24Path::kAvx2}) {
    if (sparse24_path_supported(p)) return p;
  }
  return Sparse24Path::kScalar;
}

int64_t sparse24_panel_rows(Sparse24Path path, int64_t m) {
  // wide panels amortize the per-group work over more rows; narrow ones waste fewer lanes on few rows
  const int64_t lanes = path == Sparse24Path::kAvx512 ? 16 : path == Sparse24Path::kAvx2 ? 8 : 0;
  return m <= lanes ? lanes : m <= 2 * lanes ? 2 * lanes : 4 * lanes;
}

int64_t sparse24_gather_max_rows(Sparse24Path path) {
#ifdef FASTLM_SPARSE24_X86
  if (path == Sparse24Path::kAvx512) return kDenseLanesMaxRows;
  if (path == Sparse24Path::kAvx2) return kGatherMaxRows;
#endif
  (void)path;
  return 0;
}

int64_t sparse24_scratch_floats(Sparse24Path path, int64_t m, int64_t columns) {
  return sparse24_panel_rows(path, m) * std::min<int64_t>(columns, kColumnChunk);
}

void sparse24_gemm(Sparse24Path path, const Sparse24Args& args, int64_t n0, int64_t n1, float* scratch) {
#ifdef FASTLM_SPARSE24_X86
  if (path == Sparse24Path::kAvx512) {
    if (args.panels) {
      switch (sparse24_panel_rows(path, args.m)) {
        case 16: return panel_avx512<1>(args, n0, n1, scratch);
        case 32: return panel_avx512<2>(args, n0, n1, scratch);
        default: return panel_avx512<4>(args, n0, n1, scratch);
      }
    }
    if (args.m <= kDenseLanesMaxRows) return dense_lanes_avx512(args, n0, n1);
  } else if (path == Sparse24Path::kAvx2) {
    if (args.panels) {
      switch (sparse24_panel_rows(path, args.m)) {
        case 8: return panel_avx2<1>(args, n0, n1, scratch);
        case 16: return panel_avx2<2>(args, n0, n1, scratch);
        default: return panel_avx2<4>(args, n0, n1, scratch);
      }
    }
    if (args.m <= kGatherMaxRows) return gather_avx2(args, n0, n1);
  }
#endif
  (void)scratch;
  gemm_scalar(args, n0, n1);  // rows layout
}

}  // namespace fastlm::cpu
