// int8 GEMM on AMX (Intel Sapphire Rapids and later): TDPBSSD multiplies signed by signed bytes into
// int32, 16x16 outputs += 16x64 by 64x16 per instruction, exact for every int8 value.
//
// It computes out^T = w @ a^T so that the big operand needs no packing: a tile of w is 16 rows (n)
// of 64 contiguous bytes (k) loaded straight from the (N, K) weight. The activations, small for
// inference, are packed once per call into AMX's "VNNI" B layout: [m block][k step][16 k/4][16 m][4].
// Edge tiles (n or k tails) are staged through zero-padded scratch so no load reads past a row.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "cpu/int8_kernels.h"

namespace fastlm::cpu {
namespace {

constexpr int64_t kTile = 16;      // tile rows, and int32 columns of an output tile
constexpr int64_t kStepBytes = 64;  // k bytes per tile
constexpr int64_t kPackedTileBytes = kTile * kStepBytes;

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

bool request_amx_permission() {
#if defined(__x86_64__) && defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

// w rows [n0, n0 + rows) and bytes [k0, k0 + cols) into a zero-padded 16 x 64 block.
void stage_w(const Int8GemmArgs& g, int64_t n0, int64_t rows, int64_t k0, int8_t* dst) {
  std::memset(dst, 0, kPackedTileBytes);
  const int64_t cols = std::min(kStepBytes, g.k - k0);
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * kStepBytes, g.w + (n0 + r) * g.ldw + k0, cols);
}

// Output tile c[n][m] (16 x 16 int32, n rows from n0, m columns from m0) through the epilogue into out[m][n].
void store_transposed(const Int8GemmArgs& g, const int32_t* c, int64_t n0, int64_t n_rows, int64_t m0) {
  const int64_t m_cols = std::min(kTile, g.m - m0);
  for (int64_t j = 0; j < m_cols; ++j) {
    const int64_t m = m0 + j;
    if (g.a_scale == nullptr) {
      int32_t* out = static_cast<int32_t*>(g.out) + m * g.ldo + n0;
      for (int64_t i = 0; i < n_rows; ++i) out[i] = c[i * kTile + j];
      continue;
    }
    float* out = static_cast<float*>(g.out) + m * g.ldo + n0;
    const float as = g.a_scale[m];
    for (int64_t i = 0; i < n_rows; ++i) {
      float v = static_cast<float>(c[i * kTile + j]) * as * g.b_scale[n0 + i];
      if (g.bias) v += g.bias[n0 + i];
      out[i] = v;
    }
  }
}

}  // namespace

bool int8_amx_supported() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool supported = __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-int8") &&
                                __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni") &&
                                request_amx_permission();
  return supported;
#else
  return false;
#endif
}

int64_t int8_amx_packed_bytes(int64_t m, int64_t k) {
  return ((m + kTile - 1) / kTile) * ((k + kStepBytes - 1) / kStepBytes) * kPackedTileBytes;
}

void int8_amx_pack_a(const int8_t* a, int64_t lda, int64_t m, int64_t k, int8_t* packed) {
  const int64_t m_blocks = (m + kTile - 1) / kTile, k_steps = (k + kStepBytes - 1) / kStepBytes;
  std::memset(packed, 0, m_blocks * k_steps * kPackedTileBytes);
  for (int64_t mb = 0; mb < m_blocks; ++mb) {
    for (int64_t c = 0; c < kTile && mb * kTile + c < m; ++c) {
      const int8_t* row = a + (mb * kTile + c) * lda;
      for (int64_t ks = 0; ks < k_steps; ++ks) {
        int8_t* tile = packed + (mb * k_steps + ks) * kPackedTileBytes;
        const int64_t k0 = ks * kStepBytes, cols = std::min(kStepBytes, k - k0);
        for (int64_t q = 0; q < cols; ++q) tile[(q / 4) * kStepBytes + c * 4 + q % 4] = row[k0 + q];
      }
    }
  }
}

__attribute__((target("amx-tile,amx-int8,avx512f"))) void int8_gemm_amx(const Int8GemmArgs& g, int64_t n0, int64_t n1) {
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.rows[t] = kTile;
    config.colsb[t] = kStepBytes;
  }
  _tile_loadconfig(&config);
  const int64_t m_blocks = (g.m + kTile - 1) / kTile, k_steps = (g.k + kStepBytes - 1) / kStepBytes;
  const bool k_tail = g.k % kStepBytes != 0;
  alignas(64) int8_t staged[2][kPackedTileBytes];
  alignas(64) int32_t c[4][kTile * kTile];
  // tmm0..3: outputs (w tile i x a tile j -> 2 * i + j); tmm4, 5: w tiles; tmm6, 7: a tiles.
  for (int64_t nb = n0; nb < n1; nb += 2 * kTile) {
    const int64_t rows0 = std::min(kTile, n1 - nb), rows1 = std::clamp<int64_t>(n1 - nb - kTile, 0, kTile);
    const bool two_w = rows1 > 0;
    for (int64_t mb = 0; mb < m_blocks; mb += 2) {
      const bool two_a = mb + 1 < m_blocks;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t ks = 0; ks < k_steps; ++ks) {
        const int64_t k0 = ks * kStepBytes;
        const bool edge_k = k_tail && ks == k_steps - 1;
        if (rows0 == kTile && !edge_k) {
          _tile_loadd(4, g.w + nb * g.ldw + k0, g.ldw);
        } else {
          stage_w(g, nb, rows0, k0, staged[0]);
          _tile_loadd(4, staged[0], kStepBytes);
        }
        _tile_loadd(6, g.a_packed + (mb * k_steps + ks) * kPackedTileBytes, kStepBytes);
        _tile_dpbssd(0, 4, 6);
        if (two_a) {
          _tile_loadd(7, g.a_packed + ((mb + 1) * k_steps + ks) * kPackedTileBytes, kStepBytes);
          _tile_dpbssd(1, 4, 7);
        }
        if (two_w) {
          if (rows1 == kTile && !edge_k) {
            _tile_loadd(5, g.w + (nb + kTile) * g.ldw + k0, g.ldw);
          } else {
            stage_w(g, nb + kTile, rows1, k0, staged[1]);
            _tile_loadd(5, staged[1], kStepBytes);
          }
          _tile_dpbssd(2, 5, 6);
          if (two_a) _tile_dpbssd(3, 5, 7);
        }
      }
      _tile_stored(0, c[0], kTile * 4);
      _tile_stored(1, c[1], kTile * 4);
      _tile_stored(2, c[2], kTile * 4);
      _tile_stored(3, c[3], kTile * 4);
      store_transposed(g, c[0], nb, rows0, mb * kTile);
      if (two_a) store_transposed(g, c[1], nb, rows0, (mb + 1) * kTile);
      if (two_w) store_transposed(g, c[2], nb + kTile, rows1, mb * kTile);
      if (two_w && two_a) store_transposed(g, c[3], nb + kTile, rows1, (mb + 1) * kTile);
    }
  }
  _tile_release();
}

}  // namespace fastlm::cpu
