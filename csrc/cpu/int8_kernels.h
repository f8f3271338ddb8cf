// int8 CPU kernels (torch-free): absmax quantization, int8 x int8 GEMM with int32 accumulation
// and a fused dequantization epilogue (W8A8), and fp32 x int8-weight GEMM (W8A16).
//
// Matrices are row-major with a leading dimension. The GEMMs take the second operand in nn.Linear
// layout w (N, K), so every output is a dot product of two contiguous K-vectors: out = a @ w^T.
// The vector paths are chosen at run time (Int8Path); each one is exact for all int8 values.
#pragma once
#include <cstdint>

namespace fastlm::cpu {

enum class Int8Path : int { kScalar = 0, kAvx2 = 1, kAvxVnni = 2, kAvx512Vnni = 3, kAmx = 4 };

const char* int8_path_name(Int8Path path);
bool int8_path_from_name(const char* name, Int8Path* path);  // false: unknown name
bool int8_path_supported(Int8Path path);                     // does this CPU run it?
Int8Path int8_best_path();

// One row of k fp32 values, in groups of group_size: scale[g] = absmax / 127 (1 for an all-zero
// group, at least FLT_MIN otherwise), q = clamp(round_half_even(x / scale), -127, 127).
void int8_quantize_row(const float* x, int64_t k, int64_t group_size, int8_t* q, float* scale);

// The inverse for one row: out[i] = q[i] * scale[i / group_size] (fp32).
void int8_dequantize_row(const int8_t* q, int64_t k, int64_t group_size, const float* scale, float* out);

struct Int8GemmArgs {
  const int8_t* a;  // (m, k), leading dimension lda
  int64_t lda;
  const int8_t* w;  // (n, k), leading dimension ldw: out = a @ w^T
  int64_t ldw;
  int64_t m, n, k;
  const int32_t* a_rowsum;  // sum over k of each row of a (from int8_row_stats)
  bool a_has_min;           // a holds -128 (the AVX2 path then takes its exact widening variant)
  const int8_t* a_packed;   // kAmx: a packed by int8_amx_pack_a (null otherwise)
  // Epilogue: a_scale == nullptr writes the raw int32 sums; otherwise fp32
  // out = float(acc) * a_scale[m] * b_scale[n] (+ bias[n]).
  const float* a_scale;
  const float* b_scale;
  const float* bias;  // may be null
  void* out;          // int32 or fp32 (m, n), leading dimension ldo
  int64_t ldo;
};

// Row sums of a (m, k) and whether any value is -128.
void int8_row_stats(const int8_t* a, int64_t lda, int64_t m, int64_t k, int32_t* rowsum, bool* has_min);

// AMX (kAmx): does this CPU and OS run it (asks Linux for the tile state once), the size of a's
// packed copy, and the packing (done once per call, before int8_gemm).
bool int8_amx_supported();
int64_t int8_amx_packed_bytes(int64_t m, int64_t k);
void int8_amx_pack_a(const int8_t* a, int64_t lda, int64_t m, int64_t k, int8_t* packed);
void int8_gemm_amx(const Int8GemmArgs& args, int64_t n0, int64_t n1);

// Columns [n0, n1) of the output, all m rows.
void int8_gemm(Int8Path path, const Int8GemmArgs& args, int64_t n0, int64_t n1);

struct Int8WeightGemmArgs {
  const float* x;  // (m, k) fp32, leading dimension ldx
  int64_t ldx;
  const uint16_t* x_bf16[2];  // int8_weight_gemm_bf16 only: x as bf16, one plane or two (x = [0] + [1])
  const int8_t* w;  // (n, k), leading dimension ldw
  int64_t ldw;
  const float* w_scale;  // (n, k / group_size), row-major
  int64_t group_size;
  const float* bias;  // may be null
  int64_t m, n, k;
  float* out;  // (m, n) fp32, leading dimension ldo: out = x @ (w * scale)^T + bias
  int64_t ldo;
};

// AMX-BF16 W8A16 for bf16 x and group_size == k or a multiple of 32: x packed once per call
// (int8_weight_amx_packed_bytes(m, k) bytes), then columns [n0, n1) (args.x unused).
bool int8_weight_amx_supported();
int64_t int8_weight_amx_packed_bytes(int64_t m, int64_t k);
void int8_weight_amx_pack_x(const uint16_t* x_bf16, int64_t ldx, int64_t m, int64_t k, uint16_t* packed);
void int8_weight_gemm_amx(const Int8WeightGemmArgs& args, const uint16_t* x_packed, int64_t n0, int64_t n1);

// W8A16 on AVX512-BF16 (vdpbf16ps; int8_weight_bf16_kernels.cpp says exactly what it computes): x as one
// bf16 plane, args.x_bf16[0], or two (x = [0] + [1]) for fp16 / fp32 x (args.x unused); group_size == k or a
// multiple of 32.
bool int8_weight_bf16_supported();
bool int8_weight_bf16_fits(int64_t k, int64_t group_size);
void int8_weight_gemm_bf16(const Int8WeightGemmArgs& args, int64_t n0, int64_t n1);

// Columns [n0, n1) of the output, all m rows. Paths: AVX-512 (kAmx, kAvx512Vnni), AVX2+FMA (kAvx2, kAvxVnni), scalar.
void int8_weight_gemm(Int8Path path, const Int8WeightGemmArgs& args, int64_t n0, int64_t n1);

// W8A8 with a prepacked weight (AVX-512 VNNI or AVX-VNNI; see int8_packed_kernels.cpp for the layout). Packing runs
// once per weight; each call flips a to unsigned (int8_flip_rows: m rows of int8_packed_a_stride(k)
// bytes), then int8_packed_gemm computes the blocks [b0, b1) of 16 output columns.
struct Int8PackedGemmArgs {
  const uint8_t* a_u8;  // (m, k) a + 128, rows of lda = int8_packed_a_stride(k) bytes, zero-padded
  int64_t lda;
  const int8_t* packed;  // int8_packed_weight_bytes(n, k) bytes from int8_pack_weight
  int64_t m, n, k;
  const float* a_scale;  // null: raw int32 sums; else fp32 out = acc * a_scale[m] * b_scale[n] (+ bias[n])
  const float* b_scale;
  const float* bias;
  void* out;
  int64_t ldo;
};
int64_t int8_packed_weight_bytes(int64_t n, int64_t k);
int64_t int8_packed_a_stride(int64_t k);
void int8_pack_weight(const int8_t* w, int64_t ldw, int64_t n, int64_t k, int8_t* packed);
void int8_flip_rows(const int8_t* a, int64_t lda, int64_t m, int64_t k, uint8_t* a_u8);
bool int8_packed_path_supported(Int8Path path);  // kAvx512Vnni or kAvxVnni, on a CPU that runs it
void int8_packed_gemm(Int8Path path, const Int8PackedGemmArgs& args, int64_t b0, int64_t b1);

// W8A16 (fp32 x, per-channel scale) from an int8_pack_weight result, for 1 to kMaxGemvRows rows: blocks [b0, b1)
// of 16 output columns (AVX-512F; see int8_packed_kernels.cpp).
constexpr int kMaxGemvRows = 4;
struct Int8PackedGemvArgs {
  const float* x;  // (m, k) fp32, leading dimension ldx
  int64_t ldx;
  const int8_t* packed;
  int64_t m, n, k;
  const float* w_scale;  // (n,)
  const float* bias;     // may be null
  float* out;            // (m, n), leading dimension ldo
  int64_t ldo;
};
bool int8_packed_gemv_supported();
void int8_packed_gemv(const Int8PackedGemvArgs& args, int64_t b0, int64_t b1);

}  // namespace fastlm::cpu
