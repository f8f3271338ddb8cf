// Torch glue for the int8 CPU ops: checks, layouts, fp32 staging of 16-bit tensors, threads.
// FASTLM_INT8_KERNEL=auto|amx|avx512_vnni|avx_vnni|avx2|scalar forces a vector path (tests, debugging).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/cast_scale_kernels.h"
#include "cpu/int8_kernels.h"

namespace fastlm::cpu {
namespace {

constexpr int64_t kColumnChunk = 16;  // output columns per parallel work item
// W8A16 with more rows than this (and neither the AMX nor the AVX512-BF16 kernel) dequantizes the weight to fp32
// and runs torch's fp32 GEMM.
constexpr int64_t kStreamingMaxRows = 16;
// W8A16 with bf16 x and at least this many rows uses the AVX512-BF16 kernel where the CPU has it (fewer rows:
// the fp32 streaming kernel, as fast or faster there; measured on Zen 5).
constexpr int64_t kBf16MinRows = 12;
constexpr int64_t kAmxMinRows = 4;  // int8_matmul with fewer rows of a uses AVX-512 VNNI on AMX machines

// The forced path (FASTLM_INT8_KERNEL), or the best one for an (m, k) @ (k, n) product.
Int8Path chosen_path(const char* op, int64_t m) {
  const char* env = std::getenv("FASTLM_INT8_KERNEL");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) {
    const Int8Path best = int8_best_path();
    // AMX tiles are 16 rows of a: a few rows are memory-bound and the VNNI dot products do as well.
    return best == Int8Path::kAmx && m < kAmxMinRows ? Int8Path::kAvx512Vnni : best;
  }
  Int8Path path;
  TORCH_CHECK(int8_path_from_name(env, &path), op, ": FASTLM_INT8_KERNEL=", env,
              " is not one of auto, amx, avx512_vnni, avx_vnni, avx2, scalar");
  TORCH_CHECK(int8_path_supported(path), op, ": FASTLM_INT8_KERNEL=", env, " is not supported by this CPU");
  return path;
}

CastType cast_type(const at::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return CastType::kFloat32;
    case at::kBFloat16: return CastType::kBFloat16;
    case at::kHalf: return CastType::kFloat16;
    default: TORCH_CHECK(false, op, ": ", name, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
}

// t as fp32: itself, or a converted copy (contiguous input).
at::Tensor as_float32(const at::Tensor& t, const char* op, const char* name) {
  const CastType type = cast_type(t, op, name);
  if (type == CastType::kFloat32) return t;
  at::Tensor out = at::empty(t.sizes(), t.options().dtype(at::kFloat));
  const char* src = static_cast<const char*>(t.data_ptr());
  float* dst = out.data_ptr<float>();
  const int64_t size = t.element_size();
  at::parallel_for(0, t.numel(), 1 << 16, [&](int64_t i0, int64_t i1) {
    cast_scale(src + i0 * size, type, dst + i0, CastType::kFloat32, 1.f, i1 - i0);
  });
  return out;
}

// Writes the fp32 tensor src into dst (same shape, contiguous) in dst's dtype.
void store_from_float32(const at::Tensor& src, at::Tensor& dst) {
  const CastType type = cast_type(dst, "fastlm int8 op", "out");
  const float* s = src.data_ptr<float>();
  char* d = static_cast<char*>(dst.data_ptr());
  const int64_t size = dst.element_size();
  at::parallel_for(0, src.numel(), 1 << 16, [&](int64_t i0, int64_t i1) {
    cast_scale(s + i0, CastType::kFloat32, d + i0 * size, type, 1.f, i1 - i0);
  });
}

// Runs fn(n0, n1) over the output columns in chunks, with at least ~64k multiply-adds per task.
template <typename Fn>
void parallel_columns(int64_t m, int64_t n, int64_t k, const Fn& fn) {
  const int64_t chunks = (n + kColumnChunk - 1) / kColumnChunk;
  const int64_t work = std::max<int64_t>(1, m * k * kColumnChunk);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / work);
  at::parallel_for(0, chunks, grain, [&](int64_t c0, int64_t c1) {
    fn(c0 * kColumnChunk, std::min(n, c1 * kColumnChunk));
  });
}

void check_vector(const c10::optional<at::Tensor>& t, int64_t size, const char* op, const char* name) {
  if (!t) return;
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == size, op, ": ", name,
              " must be a contiguous float32 tensor with ", size, " elements, got ", t->scalar_type(), " ", t->sizes());
}

// The W8A8 epilogue's inputs: true for raw int32 sums (no scales, no bias).
bool check_epilogue(const char* op, int64_t m, int64_t n, const c10::optional<at::Tensor>& a_scale,
                    const c10::optional<at::Tensor>& b_scale, const c10::optional<at::Tensor>& bias,
                    at::ScalarType out_dtype) {
  const bool raw = out_dtype == at::kInt;
  TORCH_CHECK(raw || out_dtype == at::kFloat || out_dtype == at::kBFloat16 || out_dtype == at::kHalf, op,
              ": out_dtype must be float32, bfloat16, float16 or int32, got ", out_dtype);
  TORCH_CHECK(raw == !a_scale.has_value() && raw == !b_scale.has_value() && !(raw && bias.has_value()), op,
              ": scales (and bias) are required except for out_dtype=int32, which takes none");
  check_vector(a_scale, m, op, "a_scale");
  check_vector(b_scale, n, op, "b_scale");
  check_vector(bias, n, op, "bias");
  return raw;
}

std::tuple<at::Tensor, at::Tensor> int8_quantize(const at::Tensor& x, int64_t group_size) {
  constexpr const char* op = "fastlm::int8_quantize";
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), op, ": x must be a contiguous 2-D tensor, got ", x.sizes());
  const int64_t rows = x.size(0), k = x.size(1);
  TORCH_CHECK(group_size > 0 && k % group_size == 0, op, ": group_size=", group_size, " must divide K=", k);
  const CastType type = cast_type(x, op, "x");
  at::Tensor q = at::empty({rows, k}, x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({rows, k / group_size}, x.options().dtype(at::kFloat));
  const char* src = static_cast<const char*>(x.data_ptr());
  const int64_t size = x.element_size();
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = scale.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(k, 1)), [&](int64_t r0, int64_t r1) {
    std::vector<float> staged(type == CastType::kFloat32 ? 0 : k);
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = reinterpret_cast<const float*>(src + r * k * size);
      if (type != CastType::kFloat32) {
        cast_scale(src + r * k * size, type, staged.data(), CastType::kFloat32, 1.f, k);
        row = staged.data();
      }
      int8_quantize_row(row, k, group_size, qp + r * k, sp + r * (k / group_size));
    }
  });
  return {q, scale};
}

at::Tensor int8_matmul(const at::Tensor& a_in, const at::Tensor& b, const c10::optional<at::Tensor>& a_scale,
                       const c10::optional<at::Tensor>& b_scale, const c10::optional<at::Tensor>& bias,
                       at::ScalarType out_dtype) {
  constexpr const char* op = "fastlm::int8_matmul";
  TORCH_CHECK(a_in.scalar_type() == at::kChar && b.scalar_type() == at::kChar, op, ": a and b must be int8, got ",
              a_in.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a_in.dim() == 2 && b.dim() == 2 && a_in.size(1) == b.size(0), op, ": expected a (M, K) and b (K, N), got ",
              a_in.sizes(), " and ", b.sizes());
  const int64_t m = a_in.size(0), k = a_in.size(1), n = b.size(1);
  const bool raw = check_epilogue(op, m, n, a_scale, b_scale, bias, out_dtype);
  // Dot products need unit stride along k: a row-major, b as w^T with w (N, K) row-major (an
  // nn.Linear weight's .t() already is).
  const at::Tensor a = a_in.stride(1) == 1 ? a_in : a_in.contiguous();
  at::Tensor w = b.t();
  if (w.stride(1) != 1) w = w.contiguous();
  at::Tensor out = at::empty({m, n}, a.options().dtype(out_dtype));
  if (m == 0 || n == 0) return out;
  at::Tensor acc_out = raw || out_dtype == at::kFloat ? out : at::empty({m, n}, a.options().dtype(at::kFloat));
  if (k == 0) {
    if (raw) return out.zero_();
    acc_out.zero_();
    if (bias) acc_out.add_(*bias);
    if (!acc_out.is_same(out)) out.copy_(acc_out);
    return out;
  }
  at::Tensor rowsum = at::empty({m}, a.options().dtype(at::kInt));
  Int8GemmArgs args{};
  args.a = a.data_ptr<int8_t>();
  args.lda = a.stride(0);
  args.w = w.data_ptr<int8_t>();
  args.ldw = w.stride(0);
  args.m = m, args.n = n, args.k = k;
  int8_row_stats(args.a, args.lda, m, k, rowsum.data_ptr<int32_t>(), &args.a_has_min);
  args.a_rowsum = rowsum.data_ptr<int32_t>();
  args.a_scale = raw ? nullptr : a_scale->data_ptr<float>();
  args.b_scale = raw ? nullptr : b_scale->data_ptr<float>();
  args.bias = bias ? bias->data_ptr<float>() : nullptr;
  args.out = acc_out.data_ptr();
  args.ldo = n;
  const Int8Path path = chosen_path(op, m);
  at::Tensor packed;
  if (path == Int8Path::kAmx) {
    packed = at::empty({int8_amx_packed_bytes(m, k)}, a.options());
    int8_amx_pack_a(args.a, args.lda, m, k, packed.data_ptr<int8_t>());
    args.a_packed = packed.data_ptr<int8_t>();
  }
  parallel_columns(m, n, k, [&](int64_t n0, int64_t n1) { int8_gemm(path, args, n0, n1); });
  if (!acc_out.is_same(out)) store_from_float32(acc_out, out);
  return out;
}

// w (N, K) int8 * w_scale (N, K / group_size) -> (N, K) fp32.
at::Tensor dequantized_weight(const at::Tensor& w, const at::Tensor& w_scale, int64_t group_size) {
  const int64_t n = w.size(0), k = w.size(1), groups = k / group_size;
  at::Tensor out = at::empty({n, k}, w.options().dtype(at::kFloat));
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = w_scale.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, n, std::max<int64_t>(1, (int64_t{1} << 15) / k), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) int8_dequantize_row(wp + r * w.stride(0), k, group_size, sp + r * groups, op + r * k);
  });
  return out;
}

// Dequantized fp32 weights (exact products w * scale, rounded once) and torch's fp32 GEMM.
at::Tensor dense_weight_matmul(const at::Tensor& x_in, const at::Tensor& w, const at::Tensor& w_scale,
                               const c10::optional<at::Tensor>& bias, int64_t group_size) {
  const at::Tensor wd = dequantized_weight(w, w_scale, group_size);
  const at::Tensor x = x_in.to(at::kFloat);
  at::Tensor y = bias ? at::addmm(*bias, x, wd.t()) : at::mm(x, wd.t());
  return y.scalar_type() == x_in.scalar_type() ? y : y.to(x_in.scalar_type());
}

// The W8A16 kernels' arguments but x: w (N, K) with unit stride along k, fp32 (m, n) out.
Int8WeightGemmArgs weight_gemm_args(const at::Tensor& w, const at::Tensor& w_scale, const c10::optional<at::Tensor>& bias,
                                    int64_t group_size, int64_t m, at::Tensor& out) {
  Int8WeightGemmArgs args{};
  args.ldx = w.size(1);
  args.w = w.data_ptr<int8_t>();
  args.ldw = w.stride(0);
  args.w_scale = w_scale.data_ptr<float>();
  args.group_size = group_size;
  args.bias = bias ? bias->data_ptr<float>() : nullptr;
  args.m = m, args.n = w.size(0), args.k = w.size(1);
  args.out = out.data_ptr<float>();
  args.ldo = w.size(0);
  return args;
}

// FASTLM_INT8_W8A16_MATH=fp32 keeps W8A16 on the fp32 kernels on AVX512-BF16 CPUs too (the path CPUs
// without AVX512-BF16 run; tests and comparisons).
bool w8a16_bf16_allowed() {
  const char* env = std::getenv("FASTLM_INT8_W8A16_MATH");
  return env == nullptr || std::strcmp(env, "fp32") != 0;
}

enum class W8A16Kernel { kAmx, kBf16, kStreaming, kDense };

// Which W8A16 kernel runs m rows of x (dtype) on the int8 path `path`.
W8A16Kernel w8a16_kernel(Int8Path path, at::ScalarType dtype, int64_t m, int64_t k, int64_t group_size) {
  // bf16 x on AMX: tiles of bf16-dequantized weights, any m (the weights are dequantized once per call).
  if (path == Int8Path::kAmx && dtype == at::kBFloat16 && (group_size == k || group_size % 32 == 0) &&
      int8_weight_amx_supported()) {
    return W8A16Kernel::kAmx;
  }
  // AVX512-BF16 CPUs: vdpbf16ps above a few rows (bf16 x; fp16 / fp32 x, split in two bf16 planes, only above
  // the streaming rows, where it beats a dequantized fp32 GEMM); fewer rows stream in fp32.
  const int64_t bf16_min_rows = dtype == at::kBFloat16 ? kBf16MinRows : kStreamingMaxRows + 1;
  if (m >= bf16_min_rows && (path == Int8Path::kAvx512Vnni || path == Int8Path::kAmx) &&
      int8_weight_bf16_supported() && int8_weight_bf16_fits(k, group_size) && w8a16_bf16_allowed()) {
    return W8A16Kernel::kBf16;
  }
  return m > kStreamingMaxRows ? W8A16Kernel::kDense : W8A16Kernel::kStreaming;
}

// The kernel's name, for benchmarks: amx_bf16, avx512_bf16, avx512_fp32 / avx2_fp32 / scalar_fp32 (streaming),
// dense_fp32.
std::string int8_weight_kernel(int64_t m, at::ScalarType dtype, int64_t k, int64_t group_size) {
  const Int8Path path = chosen_path("fastlm::int8_weight_kernel", m);
  switch (w8a16_kernel(path, dtype, m, k, group_size)) {
    case W8A16Kernel::kAmx: return "amx_bf16";
    case W8A16Kernel::kBf16: return "avx512_bf16";
    case W8A16Kernel::kDense: return "dense_fp32";
    default: break;
  }
  if (path == Int8Path::kAmx || path == Int8Path::kAvx512Vnni) return "avx512_fp32";
  return path == Int8Path::kScalar ? "scalar_fp32" : "avx2_fp32";
}

// W8A16 with vdpbf16ps (int8_weight_bf16_kernels.cpp): bf16 x as it is, fp16 / fp32 x as x_hi + x_lo in bf16.
at::Tensor bf16_weight_matmul(const at::Tensor& x_in, const at::Tensor& w, const at::Tensor& w_scale,
                              const c10::optional<at::Tensor>& bias, int64_t group_size) {
  const int64_t m = x_in.size(0), k = x_in.size(1), n = w.size(0);
  at::Tensor out = at::empty({m, n}, x_in.options());
  if (m == 0) return out;
  at::Tensor hi = x_in.contiguous(), lo;
  if (hi.scalar_type() != at::kBFloat16) {
    const at::Tensor xf = hi.to(at::kFloat);
    hi = xf.to(at::kBFloat16);
    lo = (xf - hi.to(at::kFloat)).to(at::kBFloat16);  // exact difference; its rounding is the only loss
  }
  at::Tensor acc_out = x_in.scalar_type() == at::kFloat ? out : at::empty({m, n}, x_in.options().dtype(at::kFloat));
  Int8WeightGemmArgs args = weight_gemm_args(w, w_scale, bias, group_size, m, acc_out);
  args.x_bf16[0] = reinterpret_cast<const uint16_t*>(hi.data_ptr());
  args.x_bf16[1] = lo.defined() ? reinterpret_cast<const uint16_t*>(lo.data_ptr()) : nullptr;
  parallel_columns(m, n, k, [&](int64_t n0, int64_t n1) { int8_weight_gemm_bf16(args, n0, n1); });
  if (!acc_out.is_same(out)) store_from_float32(acc_out, out);
  return out;
}

at::Tensor int8_weight_matmul(const at::Tensor& x_in, const at::Tensor& w, const at::Tensor& w_scale,
                              const c10::optional<at::Tensor>& bias, int64_t group_size) {
  constexpr const char* op = "fastlm::int8_weight_matmul";
  cast_type(x_in, op, "x");
  TORCH_CHECK(w.scalar_type() == at::kChar, op, ": w must be int8, got ", w.scalar_type());
  TORCH_CHECK(x_in.dim() == 2 && w.dim() == 2 && x_in.size(1) == w.size(1), op, ": expected x (M, K) and w (N, K), got ",
              x_in.sizes(), " and ", w.sizes());
  const int64_t m = x_in.size(0), k = x_in.size(1), n = w.size(0);
  TORCH_CHECK(group_size > 0 && k % group_size == 0, op, ": group_size=", group_size, " must divide K=", k);
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.is_contiguous() && w_scale.dim() == 2 &&
                  w_scale.size(0) == n && w_scale.size(1) == k / group_size,
              op, ": w_scale must be a contiguous float32 (", n, ", ", k / group_size, ") tensor, got ",
              w_scale.scalar_type(), " ", w_scale.sizes());
  check_vector(bias, n, op, "bias");
  const at::Tensor wc = w.stride(1) == 1 ? w : w.contiguous();
  const Int8Path path = chosen_path(op, m);
  const W8A16Kernel kernel = w8a16_kernel(path, x_in.scalar_type(), m, k, group_size);
  if (kernel == W8A16Kernel::kBf16) return bf16_weight_matmul(x_in, wc, w_scale, bias, group_size);
  if (kernel == W8A16Kernel::kDense) return dense_weight_matmul(x_in.contiguous(), wc, w_scale, bias, group_size);
  const bool amx = kernel == W8A16Kernel::kAmx;
  at::Tensor out = at::empty({m, n}, x_in.options());
  if (m == 0) return out;
  const at::Tensor x = amx ? x_in.contiguous() : as_float32(x_in.contiguous(), op, "x");
  at::Tensor acc_out = x_in.scalar_type() == at::kFloat ? out : at::empty({m, n}, x.options().dtype(at::kFloat));
  Int8WeightGemmArgs args = weight_gemm_args(wc, w_scale, bias, group_size, m, acc_out);
  args.x = amx ? nullptr : x.data_ptr<float>();
  if (amx) {
    at::Tensor packed = at::empty({int8_weight_amx_packed_bytes(m, k) / 2}, x.options());
    const auto* x_bits = reinterpret_cast<const uint16_t*>(x.data_ptr());
    auto* packed_bits = reinterpret_cast<uint16_t*>(packed.data_ptr());
    int8_weight_amx_pack_x(x_bits, k, m, k, packed_bits);
    parallel_columns(m, n, k, [&](int64_t n0, int64_t n1) { int8_weight_gemm_amx(args, packed_bits, n0, n1); });
    store_from_float32(acc_out, out);
    return out;
  }
  parallel_columns(m, n, k, [&](int64_t n0, int64_t n1) { int8_weight_gemm(path, args, n0, n1); });
  if (!acc_out.is_same(out)) store_from_float32(acc_out, out);
  return out;
}

at::Tensor int8_pack_weight_op(const at::Tensor& w) {
  constexpr const char* op = "fastlm::int8_pack_weight";
  TORCH_CHECK(w.scalar_type() == at::kChar && w.dim() == 2, op, ": w must be a 2-D (N, K) int8 tensor, got ",
              w.scalar_type(), " ", w.sizes());
  const at::Tensor wc = w.stride(1) == 1 ? w : w.contiguous();
  at::Tensor packed = at::empty({int8_packed_weight_bytes(w.size(0), w.size(1))}, w.options());
  int8_pack_weight(wc.data_ptr<int8_t>(), wc.stride(0), w.size(0), w.size(1), packed.data_ptr<int8_t>());
  return packed;
}

at::Tensor int8_packed_matmul(const at::Tensor& a_in, const at::Tensor& packed, int64_t n,
                              const c10::optional<at::Tensor>& a_scale, const c10::optional<at::Tensor>& b_scale,
                              const c10::optional<at::Tensor>& bias, at::ScalarType out_dtype) {
  constexpr const char* op = "fastlm::int8_packed_matmul";
  // AVX-512 VNNI unless FASTLM_INT8_KERNEL=avx_vnni (or AVX-VNNI is the best this CPU has).
  Int8Path path = chosen_path(op, a_in.size(0));
  if (path == Int8Path::kAmx) path = Int8Path::kAvx512Vnni;
  TORCH_CHECK(int8_packed_path_supported(path), op, ": runs on AVX-512 VNNI or AVX-VNNI, not on the ",
              int8_path_name(path), " path");
  TORCH_CHECK(a_in.scalar_type() == at::kChar && a_in.dim() == 2, op, ": a must be a 2-D (M, K) int8 tensor, got ",
              a_in.scalar_type(), " ", a_in.sizes());
  const int64_t m = a_in.size(0), k = a_in.size(1);
  TORCH_CHECK(packed.scalar_type() == at::kChar && packed.dim() == 1 && packed.is_contiguous() &&
                  packed.numel() == int8_packed_weight_bytes(n, k),
              op, ": packed is not an int8_pack_weight result for N=", n, ", K=", k);
  const bool raw = check_epilogue(op, m, n, a_scale, b_scale, bias, out_dtype);
  const at::Tensor a = a_in.stride(1) == 1 ? a_in : a_in.contiguous();
  at::Tensor out = at::empty({m, n}, a.options().dtype(out_dtype));
  if (m == 0 || n == 0) return out;
  at::Tensor acc_out = raw || out_dtype == at::kFloat ? out : at::empty({m, n}, a.options().dtype(at::kFloat));
  const int64_t lda = int8_packed_a_stride(k);
  at::Tensor a_u8 = at::empty({m, lda}, a.options().dtype(at::kByte));
  const int8_t* ap = a.data_ptr<int8_t>();
  uint8_t* up = a_u8.data_ptr<uint8_t>();
  at::parallel_for(0, m, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(k, 1)), [&](int64_t r0, int64_t r1) {
    int8_flip_rows(ap + r0 * a.stride(0), a.stride(0), r1 - r0, k, up + r0 * lda);
  });
  Int8PackedGemmArgs args{};
  args.a_u8 = up;
  args.lda = lda;
  args.packed = packed.data_ptr<int8_t>();
  args.m = m, args.n = n, args.k = k;
  args.a_scale = raw ? nullptr : a_scale->data_ptr<float>();
  args.b_scale = raw ? nullptr : b_scale->data_ptr<float>();
  args.bias = bias ? bias->data_ptr<float>() : nullptr;
  args.out = acc_out.data_ptr();
  args.ldo = n;
  // Work items of 4 blocks (64 columns), at least ~256k multiply-adds each.
  const int64_t items = (n + 63) / 64;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, m * k * 64));
  at::parallel_for(0, items, grain, [&](int64_t i0, int64_t i1) {
    int8_packed_gemm(path, args, i0 * 4, std::min((n + 15) / 16, i1 * 4));
  });
  if (!acc_out.is_same(out)) store_from_float32(acc_out, out);
  return out;
}

// W8A16 for 1-4 rows from a packed weight (one weight stream per thread): fp32 math, per-channel w_scale.
at::Tensor int8_weight_packed_matmul(const at::Tensor& x_in, const at::Tensor& packed, int64_t n, const at::Tensor& w_scale,
                                     const c10::optional<at::Tensor>& bias) {
  constexpr const char* op = "fastlm::int8_weight_packed_matmul";
  TORCH_CHECK(int8_packed_gemv_supported(), op, ": needs AVX-512");
  cast_type(x_in, op, "x");
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(0) <= kMaxGemvRows, op, ": x must be (M, K) with M <= ", kMaxGemvRows,
              ", got ", x_in.sizes());
  const int64_t m = x_in.size(0), k = x_in.size(1);
  TORCH_CHECK(packed.scalar_type() == at::kChar && packed.dim() == 1 && packed.is_contiguous() &&
                  packed.numel() == int8_packed_weight_bytes(n, k),
              op, ": packed is not an int8_pack_weight result for N=", n, ", K=", k);
  check_vector(w_scale, n, op, "w_scale");
  check_vector(bias, n, op, "bias");
  at::Tensor out = at::empty({m, n}, x_in.options());
  if (m == 0 || n == 0) return out;
  const at::Tensor x = as_float32(x_in.contiguous(), op, "x");
  at::Tensor acc_out = x_in.scalar_type() == at::kFloat ? out : at::empty({m, n}, x.options());
  Int8PackedGemvArgs args{};
  args.x = x.data_ptr<float>();
  args.ldx = k;
  args.packed = packed.data_ptr<int8_t>();
  args.m = m, args.n = n, args.k = k;
  args.w_scale = w_scale.data_ptr<float>();
  args.bias = bias ? bias->data_ptr<float>() : nullptr;
  args.out = acc_out.data_ptr<float>();
  args.ldo = n;
  const int64_t blocks = (n + 15) / 16;
  at::parallel_for(0, blocks, std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, m * k * 16)),
                   [&](int64_t b0, int64_t b1) { int8_packed_gemv(args, b0, b1); });
  if (!acc_out.is_same(out)) store_from_float32(acc_out, out);
  return out;
}

std::vector<std::string> int8_cpu_kernels() {
  std::vector<std::string> names;
  for (Int8Path p : {Int8Path::kAmx, Int8Path::kAvx512Vnni, Int8Path::kAvxVnni, Int8Path::kAvx2, Int8Path::kScalar}) {
    if (int8_path_supported(p)) names.emplace_back(int8_path_name(p));
  }
  return names;
}

}  // namespace

// int8_quantize, int8_matmul, int8_weight_matmul: schemas in fastlm/ops/schemas.py.
TORCH_LIBRARY_FRAGMENT(fastlm, m) {
  // The CPU vector paths this machine runs, best first (for FASTLM_INT8_KERNEL).
  m.def("int8_cpu_kernels() -> str[]", &int8_cpu_kernels);
  // The W8A16 kernel int8_weight_matmul runs for m rows of x (dtype), K = k, under FASTLM_INT8_KERNEL.
  m.def("int8_weight_kernel(int m, ScalarType dtype, int k, int group_size) -> str", &int8_weight_kernel);
  // W8A8 with the weight packed once (AVX-512 VNNI CPUs): fastlm.ops.int8_matmul.PackedInt8Weight.
  m.def("int8_pack_weight(Tensor w) -> Tensor");
  m.def("int8_packed_matmul(Tensor a, Tensor packed, int n, Tensor? a_scale, Tensor? b_scale, Tensor? bias, "
        "ScalarType out_dtype) -> Tensor");
  // W8A16 for 1-4 rows from the same packed weight (per-channel scale): fastlm.ops.int8_weight_matmul.
  m.def("int8_weight_packed_matmul(Tensor x, Tensor packed, int n, Tensor w_scale, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastlm, CPU, m) {
  m.impl("int8_quantize", &int8_quantize);
  m.impl("int8_matmul", &int8_matmul);
  m.impl("int8_weight_matmul", &int8_weight_matmul);
  m.impl("int8_pack_weight", &int8_pack_weight_op);
  m.impl("int8_packed_matmul", &int8_packed_matmul);
  m.impl("int8_weight_packed_matmul", &int8_weight_packed_matmul);
}

}  // namespace fastlm::cpu
