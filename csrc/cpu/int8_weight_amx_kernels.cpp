// W8A16 with bf16 activations on AMX: out^T = (w * scale) @ x^T with TDPBF16PS (bf16 pairs, fp32 sums).
//
// Each 16 x 32 block of int8 weights is dequantized in AVX-512 registers (int8 -> fp32, times its
// group's scale, -> bf16: the weights' only rounding) into a scratch tile; x (at most a few rows,
// as in decoding) is packed once per call into AMX's pair-interleaved B layout [k step][16 k/2][16 m][2].
// The products of bf16 values are exact and sums are fp32, so this matches the fp32-dequantized
// reference up to the bf16 rounding of w * scale.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/int8_kernels.h"

namespace fastlm::cpu {
namespace {

constexpr int64_t kTile = 16;
constexpr int64_t kStep = 32;  // k values (bf16 pairs x 16) per tile row
constexpr int64_t kTileBytes = kTile * 64;

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Rows [n0, n0 + rows) x k [k0, k0 + 32) of w * scale as bf16 into a 16 x 32 tile (zero padded).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void dequantize_tile(
    const Int8WeightGemmArgs& g, int64_t n0, int64_t rows, int64_t k0, uint16_t* tile) {
  const int64_t cols = std::min(kStep, g.k - k0), groups = g.k / g.group_size;
  const __mmask32 mask = cols == kStep ? ~__mmask32(0) : (__mmask32(1) << cols) - 1;
  // per channel (one group): the scale applies to the sums instead (int8 values are exact in bf16)
  const bool per_channel = groups == 1;
  for (int64_t r = 0; r < kTile; ++r) {
    __m512i out = _mm512_setzero_si512();
    if (r < rows) {
      const int64_t n = n0 + r;
      const int8_t* src = g.w + n * g.ldw + k0;
      // the rows stream from L3 / DRAM: fetch 8 steps ahead (more rows than the hardware prefetcher tracks)
      if (k0 + 8 * kStep < g.k) _mm_prefetch(reinterpret_cast<const char*>(src + 8 * kStep), _MM_HINT_T0);
      const __m256i bytes = cols == kStep ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src))
                                          : _mm256_maskz_loadu_epi8(mask, src);
      __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(bytes)));
      __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(bytes, 1)));
      if (!per_channel) {
        const __m512 s = _mm512_set1_ps(g.w_scale[n * groups + k0 / g.group_size]);
        lo = _mm512_mul_ps(lo, s);
        hi = _mm512_mul_ps(hi, s);
      }
      out = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));  // lo -> elements 0..15
    }
    _mm512_store_si512(tile + r * kStep, out);
  }
}

// Output tile c[n][m] (16 x 16, n rows from n0, m columns from m0) into out[m][n], with scale and bias.
void store_transposed(const Int8WeightGemmArgs& g, const float* c, int64_t n0, int64_t n_rows, int64_t m0) {
  const bool per_channel = g.group_size == g.k;
  for (int64_t j = 0; j < std::min(kTile, g.m - m0); ++j) {
    float* out = g.out + (m0 + j) * g.ldo + n0;
    for (int64_t i = 0; i < n_rows; ++i) {
      const float scale = per_channel ? g.w_scale[n0 + i] : 1.f;
      out[i] = c[i * kTile + j] * scale + (g.bias ? g.bias[n0 + i] : 0.f);
    }
  }
}

}  // namespace

bool int8_weight_amx_supported() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool supported = int8_amx_supported() && __builtin_cpu_supports("amx-bf16") &&
                                __builtin_cpu_supports("avx512bf16");
  return supported;
#else
  return false;
#endif
}

int64_t int8_weight_amx_packed_bytes(int64_t m, int64_t k) {
  return (m + kTile - 1) / kTile * ((k + kStep - 1) / kStep) * kTileBytes;
}

void int8_weight_amx_pack_x(const uint16_t* x, int64_t ldx, int64_t m, int64_t k, uint16_t* packed) {
  const int64_t k_steps = (k + kStep - 1) / kStep, m_blocks = (m + kTile - 1) / kTile;
  std::memset(packed, 0, m_blocks * k_steps * kTileBytes);
  for (int64_t row = 0; row < m; ++row) {
    const int64_t mb = row / kTile, c = row % kTile;
    uint16_t* block = packed + mb * k_steps * (kTileBytes / 2);
    // Whole bf16 pairs move as 32-bit words: pair q of the row goes to [q / 16][q % 16][c].
    const int64_t pairs = k / 2;
    for (int64_t q = 0; q < pairs; ++q) {
      uint32_t pair;
      std::memcpy(&pair, x + row * ldx + 2 * q, 4);
      std::memcpy(block + ((q / kTile) * kTile * kTile + (q % kTile) * kTile + c) * 2, &pair, 4);
    }
    if (k % 2) {
      const int64_t q = k - 1, ks = q / kStep, p = q % kStep;
      block[ks * (kTileBytes / 2) + (p / 2) * kStep + c * 2] = x[row * ldx + q];
    }
  }
}

namespace {

// m <= 16 (one block of x, as in decoding): four 16-row blocks of w per pass, each k step's four
// weight tiles dequantized just before their TDPBF16PS (into a double buffer that stays in L1), so
// the AVX-512 conversions overlap the tile multiplies; four independent accumulators (tmm0..3).
// tmm4: the x tile; tmm5..7: weight tiles (tmm5 twice per step).
__attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16"))) void gemm_amx_one_m_block(
    const Int8WeightGemmArgs& g, const uint16_t* x_packed, int64_t n0, int64_t n1) {
  const int64_t k_steps = (g.k + kStep - 1) / kStep, tile_elems = kTile * kStep;
  alignas(64) uint16_t w_tiles[2][4][kTile * kStep];
  alignas(64) float c[4][kTile * kTile];
  for (int64_t nb = n0; nb < n1; nb += 4 * kTile) {
    int64_t rows[4];
    for (int b = 0; b < 4; ++b) rows[b] = std::clamp<int64_t>(n1 - nb - b * kTile, 0, kTile);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t ks = 0; ks < k_steps; ++ks) {
      uint16_t(*w)[kTile * kStep] = w_tiles[ks % 2];
      for (int b = 0; b < 4; ++b)
        if (rows[b] > 0) dequantize_tile(g, nb + b * kTile, rows[b], ks * kStep, w[b]);
      _tile_loadd(4, x_packed + ks * tile_elems, 64);
      _tile_loadd(5, w[0], 64);
      _tile_dpbf16ps(0, 5, 4);
      if (rows[1] > 0) {
        _tile_loadd(6, w[1], 64);
        _tile_dpbf16ps(1, 6, 4);
      }
      if (rows[2] > 0) {
        _tile_loadd(7, w[2], 64);
        _tile_dpbf16ps(2, 7, 4);
      }
      if (rows[3] > 0) {
        _tile_loadd(5, w[3], 64);
        _tile_dpbf16ps(3, 5, 4);
      }
    }
    _tile_stored(0, c[0], kTile * 4);
    _tile_stored(1, c[1], kTile * 4);
    _tile_stored(2, c[2], kTile * 4);
    _tile_stored(3, c[3], kTile * 4);
    for (int b = 0; b < 4; ++b)
      if (rows[b] > 0) store_transposed(g, c[b], nb + b * kTile, rows[b], 0);
  }
}

}  // namespace

__attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16"))) void int8_weight_gemm_amx(
    const Int8WeightGemmArgs& g, const uint16_t* x_packed, int64_t n0, int64_t n1) {
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.rows[t] = kTile;
    config.colsb[t] = 64;
  }
  _tile_loadconfig(&config);
  if (g.m <= kTile) {
    gemm_amx_one_m_block(g, x_packed, n0, n1);
    _tile_release();
    return;
  }
  const int64_t k_steps = (g.k + kStep - 1) / kStep, m_blocks = (g.m + kTile - 1) / kTile;
  const int64_t tile_elems = kTile * kStep;
  // Two 16-row blocks of w dequantized to bf16 over all of k (K * 64 bytes: fits L2), reused by every m block.
  std::vector<uint16_t> storage(2 * k_steps * tile_elems + 32);
  uint16_t* w_tiles = storage.data() + (64 - reinterpret_cast<uintptr_t>(storage.data()) % 64) % 64 / 2;  // 64-byte aligned
  alignas(64) float c[4][kTile * kTile];
  // tmm0..3: outputs (w block i x m block j -> 2 * i + j); tmm4, 5: w tiles; tmm6, 7: packed x tiles.
  for (int64_t nb = n0; nb < n1; nb += 2 * kTile) {
    const int64_t rows0 = std::min(kTile, n1 - nb), rows1 = std::clamp<int64_t>(n1 - nb - kTile, 0, kTile);
    const bool two_w = rows1 > 0;
    for (int64_t ks = 0; ks < k_steps; ++ks) {
      dequantize_tile(g, nb, rows0, ks * kStep, &w_tiles[ks * tile_elems]);
      if (two_w) dequantize_tile(g, nb + kTile, rows1, ks * kStep, &w_tiles[(k_steps + ks) * tile_elems]);
    }
    for (int64_t mb = 0; mb < m_blocks; mb += 2) {
      const bool two_m = mb + 1 < m_blocks;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t ks = 0; ks < k_steps; ++ks) {
        _tile_loadd(4, &w_tiles[ks * tile_elems], 64);
        _tile_loadd(6, x_packed + (mb * k_steps + ks) * (kTileBytes / 2), 64);
        _tile_dpbf16ps(0, 4, 6);
        if (two_m) {
          _tile_loadd(7, x_packed + ((mb + 1) * k_steps + ks) * (kTileBytes / 2), 64);
          _tile_dpbf16ps(1, 4, 7);
        }
        if (two_w) {
          _tile_loadd(5, &w_tiles[(k_steps + ks) * tile_elems], 64);
          _tile_dpbf16ps(2, 5, 6);
          if (two_m) _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, c[0], kTile * 4);
      _tile_stored(1, c[1], kTile * 4);
      _tile_stored(2, c[2], kTile * 4);
      _tile_stored(3, c[3], kTile * 4);
      store_transposed(g, c[0], nb, rows0, mb * kTile);
      if (two_m) store_transposed(g, c[1], nb, rows0, (mb + 1) * kTile);
      if (two_w) store_transposed(g, c[2], nb + kTile, rows1, mb * kTile);
      if (two_w && two_m) store_transposed(g, c[3], nb + kTile, rows1, (mb + 1) * kTile);
    }
  }
  _tile_release();
}

}  // namespace fastlm::cpu
