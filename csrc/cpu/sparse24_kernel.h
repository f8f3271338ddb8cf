// 2:4 sparse GEMM for CPU inference (torch-free): out (m, n) = x (m, k) @ W^T + bias, W (n, k) stored
// compressed: values (n, 2g) fp32, the two kept weights of each group of 4 input columns (g = ceil(k / 4)
// groups), and meta (n, ceil(g / 2)) bytes, a nibble i0 | i1 << 2 per group (group 2j in the low nibble of
// byte j): the kept columns are 4 * group + i0 and 4 * group + i1. Format: fastlm/ops/reference_sparse24.py.
//
// The kernels read x zero-padded to 4g columns (an offset may point past k in a partial last group, with
// a zero value), as prepared by the caller in one of two layouts:
//   rows  (m, 4g)                      gather path, for few rows (decoding)
//   panels (ceil(m / mb), 4g, mb)      panel path: mb rows of x side by side, so each kept weight
//                                      multiplies mb values with one vector FMA per 16 (or 8) rows
#pragma once
#include <cstdint>

namespace fastlm::cpu {

enum class Sparse24Path : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

const char* sparse24_path_name(Sparse24Path path);
bool sparse24_path_from_name(const char* name, Sparse24Path* path);  // false: unknown name
bool sparse24_path_supported(Sparse24Path path);
Sparse24Path sparse24_best_path();

// Rows of x the panel path puts side by side for m rows (0: the path has no panel layout).
int64_t sparse24_panel_rows(Sparse24Path path, int64_t m);
// Up to this many rows of x the few-rows path (AVX-512 dense lanes, AVX2 gathers) runs, above it panels.
int64_t sparse24_gather_max_rows(Sparse24Path path);

struct Sparse24Args {
  const float* x;       // rows (m, kp) or panels (ceil(m / mb), kp, mb), zero-padded, kp = 4 * groups
  bool panels;
  const float* values;  // (n, 2 * groups)
  const uint8_t* meta;  // (n, meta_stride), meta_stride = ceil(groups / 2)
  const float* bias;    // (n,) or null
  float* out;           // (m, n) row-major
  int64_t m, n, groups, meta_stride;
};

// Output columns [n0, n1), all m rows. scratch: sparse24_scratch_floats(path, m, n1 - n0) floats.
void sparse24_gemm(Sparse24Path path, const Sparse24Args& args, int64_t n0, int64_t n1, float* scratch);
int64_t sparse24_scratch_floats(Sparse24Path path, int64_t m, int64_t columns);

}  // namespace fastlm::cpu
