// Torch glue of the fused matmul: out = act(a @ b + bias), and its backward.
//
// 16-bit inputs are always computed in fp32 (fp32 accumulation, the epilogue in fp32, one rounding
// at the end), by one of two GEMMs chosen per dtype at the first call:
//  - "native": at::mm on the 16-bit tensors, where the CPU has fast 16-bit GEMM (oneDNN with AMX /
//    AVX512-BF16: several times faster than fp32). The output is rounded to 16 bits once before the
//    epilogue, as in an unfused autocast linear.
//  - "fp32": panels of a and b converted to fp32 and fed to the fp32 GEMM (MKL/OpenBLAS). On CPUs
//    without native bf16 (AVX2), torch's 16-bit GEMM is 10-100x slower than this.
// "auto" decides by CPU feature where that is unambiguous: bf16 is native on a CPU with AMX-BF16 or
// AVX512-BF16 (oneDNN's bf16 GEMM there is several times faster than fp32). Elsewhere (bf16 without
// those, fp16 everywhere) it times both GEMMs once on a small problem and takes native when it is
// clearly (2x) faster. A timing alone was unstable: under load it sometimes picked fp32 panels on an
// AVX512-BF16 CPU, making that process's bf16 training ~1.5x slower.
// FASTLM_CPU_GEMM16=native|fp32 forces one (tests cover both paths on any machine);
// FASTLM_CPU_FEATURES (a test hook: comma-separated amx_bf16, avx512_bf16) replaces the detected features;
// a oneDNN ISA cap (ONEDNN_MAX_CPU_ISA) leaves the choice to the timing.
// fp32 GEMMs (fp32 inputs, and the converted panels) go through mm_f32 (gemm32.cpp): torch's BLAS or
// oneDNN, whichever this CPU runs faster (FASTLM_CPU_GEMM32 forces one).
#include "gemm32.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/cast_scale_kernels.h"
#include "cpu/matmul_kernels.h"

namespace fastlm::cpu {
namespace {

Activation parse_activation(const std::string& name) {
  if (name == "none") return Activation::kNone;
  if (name == "gelu") return Activation::kGelu;
  if (name == "gelu_tanh") return Activation::kGeluTanh;
  if (name == "silu") return Activation::kSilu;
  TORCH_CHECK(false, "fastlm::matmul: unknown activation '", name, "' (expected none, gelu, gelu_tanh, silu)");
}

CastType cast_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return CastType::kFloat32;
    case at::kBFloat16: return CastType::kBFloat16;
    case at::kHalf: return CastType::kFloat16;
    default: TORCH_CHECK(false, "fastlm::matmul: dtype must be float32, bfloat16 or float16, got ", t);
  }
}

// ---------------------------------------------------------------- which 16-bit GEMM

double best_seconds(const at::Tensor& x, const at::Tensor& y) {
  double best = 1e30;
  for (int rep = 0; rep < 4; ++rep) {  // the first run warms up (oneDNN primitive creation)
    const auto t0 = std::chrono::steady_clock::now();
    at::mm(x, y);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (rep > 0) best = std::min(best, s);
  }
  return best;
}

bool native_is_faster(at::ScalarType dtype) {
  // Constant data: the global random generator must not move (runs stay reproducible).
  const auto x = at::full({128, 512}, 0.5f), y = at::full({512, 512}, 0.25f);
  const double native = best_seconds(x.to(dtype), y.to(dtype));
  const double fp32 = best_seconds(x, y);
  // Native 16-bit GEMM is either several times faster (AMX / AVX512-BF16) or 10-100x slower
  // (AVX2) than fp32. Requiring a clear 2x margin keeps the choice the same on every run and
  // every rank where the two are close (fp16 on AMX machines), at a small cost there.
  return 2.0 * native <= fp32;
}

// The CPU's 16-bit GEMM features, or the ones FASTLM_CPU_FEATURES names (tests fake a CPU with it).
struct Gemm16Features {
  bool amx_bf16 = false, avx512_bf16 = false;
};

Gemm16Features gemm16_features() {
  Gemm16Features f;
  if (const char* fake = std::getenv("FASTLM_CPU_FEATURES")) {
    const std::string names = std::string(",") + fake + ",";
    f.amx_bf16 = names.find(",amx_bf16,") != std::string::npos;
    f.avx512_bf16 = names.find(",avx512_bf16,") != std::string::npos;
    return f;
  }
  // oneDNN capped below its bf16 ISA (ONEDNN_MAX_CPU_ISA=AVX2, as train_throughput's no_native_bf16
  // runs set): the features say nothing about the GEMM torch will run, so the timing decides.
  for (const char* cap_name : {"ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"}) {
    const char* cap = std::getenv(cap_name);
    if (cap && *cap && std::strcmp(cap, "ALL") != 0 && std::strcmp(cap, "DEFAULT") != 0) return f;
  }
  f.amx_bf16 = __builtin_cpu_supports("amx-bf16");
  f.avx512_bf16 = __builtin_cpu_supports("avx512bf16");
  return f;
}

// How "auto" decided, for matmul_cpu_gemm16_choice: "native (cpu feature)", "fp32 (timed)", ...
struct Gemm16Choice {
  bool native;
  const char* how;
};

Gemm16Choice auto_choice(at::ScalarType dtype) {
  const Gemm16Features f = gemm16_features();
  if (dtype == at::kBFloat16 && (f.amx_bf16 || f.avx512_bf16)) return {true, "cpu feature"};
  return {native_is_faster(dtype), "timed"};
}

// The choice for dtype: forced by FASTLM_CPU_GEMM16 (read at every call), else auto's, made once per
// process and dtype.
Gemm16Choice gemm16_choice(at::ScalarType dtype) {
  if (dtype == at::kFloat) return {true, "fp32 input"};
  const char* env = std::getenv("FASTLM_CPU_GEMM16");
  const std::string mode = env ? env : "auto";
  if (mode == "native") return {true, "forced"};
  if (mode == "fp32") return {false, "forced"};
  TORCH_CHECK(mode == "auto" || mode.empty(), "FASTLM_CPU_GEMM16=", mode, " is not one of auto, native, fp32");
  static std::atomic<int> bf16{-1}, fp16{-1};  // -1: not decided yet; else 2 * native + (how == "timed")
  std::atomic<int>& choice = dtype == at::kBFloat16 ? bf16 : fp16;
  if (choice.load() < 0) {
    const Gemm16Choice c = auto_choice(dtype);
    choice.store(2 * int(c.native) + int(std::strcmp(c.how, "timed") == 0));
  }
  const int c = choice.load();
  return {c >= 2, (c & 1) ? "timed" : "cpu feature"};
}

bool use_native_gemm(at::ScalarType dtype) { return gemm16_choice(dtype).native; }

// ---------------------------------------------------------------- fp32 GEMM on converted panels

at::Tensor as_fp32(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); }

// C = X @ Y in fp32, block by block: emit(m0, n0, c) gets each block c (fp32, writable).
// X (M x K) rows are converted in chunks of <= 32 MB of fp32, Y (K x N) in column panels of
// <= 4 MB, so the fp32 copies stay small and each Y panel is converted once per X chunk.
template <class Emit>
void gemm_fp32_blocks(const at::Tensor& x, const at::Tensor& y, Emit emit) {
  const int64_t M = x.size(0), K = x.size(1), N = y.size(1);
  const bool single = x.scalar_type() == at::kFloat && y.scalar_type() == at::kFloat;
  const int64_t k = std::max<int64_t>(K, 1);
  const int64_t mb = single ? M : std::max<int64_t>(256, (int64_t{8} << 20) / k);
  const int64_t nb = single ? N : std::max<int64_t>(64, ((int64_t{1} << 20) / k) / 64 * 64);
  for (int64_t m0 = 0; m0 < M; m0 += mb) {
    const at::Tensor xs = as_fp32(x.narrow(0, m0, std::min(mb, M - m0)));
    for (int64_t n0 = 0; n0 < N; n0 += nb) {
      const at::Tensor ys = as_fp32(y.narrow(1, n0, std::min(nb, N - n0)));
      emit(m0, n0, mm_f32(xs, ys));
    }
  }
}

// C = X @ Y as `dtype` (M x N, contiguous), computed in fp32.
at::Tensor gemm(const at::Tensor& x, const at::Tensor& y, at::ScalarType dtype, bool native) {
  if (native && x.scalar_type() == dtype && y.scalar_type() == dtype) {
    return dtype == at::kFloat ? mm_f32(x, y) : at::mm(x, y);
  }
  at::Tensor out = at::empty({x.size(0), y.size(1)}, x.options().dtype(dtype));
  gemm_fp32_blocks(x, y, [&](int64_t m0, int64_t n0, const at::Tensor& c) {
    out.narrow(0, m0, c.size(0)).narrow(1, n0, c.size(1)).copy_(c);
  });
  return out;
}

// Up to this many rows of a, fp32-path products with b = weight.t() skip the fp32 copy of the
// weight: each weight row is converted in L1 and dotted with every row of a (small_m_gemm).
constexpr int64_t kSmallM = 8;

// fp32 (M x N) = a @ b for small M, b (K x N) with b.stride(0) == 1 (rows of b.t() contiguous).
at::Tensor small_m_matmul(const at::Tensor& a, const at::Tensor& b) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  const at::Tensor a32 = a.to(at::kFloat).contiguous();
  at::Tensor c = at::empty({M, N}, a.options().dtype(at::kFloat));
  const char* w = static_cast<const char*>(b.data_ptr());
  const int64_t es = b.element_size(), ldw = b.stride(1);
  const int w_type = static_cast<int>(cast_type(b.scalar_type()));
  float* cp = c.data_ptr<float>();
  const float* ap = a32.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    std::vector<float> buf(K);
    small_m_gemm(ap, M, K, w + n0 * ldw * es, w_type, ldw, n1 - n0, cp + n0, N, buf.data());
  });
  return c;
}

// ---------------------------------------------------------------- the epilogue on a block of rows

struct Epilogue {
  const float* bias;  // fp32 (N,) or null
  Activation act;
  at::Tensor out, pre;  // (M, N) contiguous; pre is written when act != kNone

  // Rows [m0, m0 + c.size(0)) and columns [n0, n0 + c.size(1)) of the result, from fp32 c (modified).
  void rows(int64_t m0, int64_t n0, at::Tensor& c) const {
    const int64_t rows = c.size(0), cols = c.size(1), N = out.size(1), ldc = c.stride(0);
    TORCH_INTERNAL_ASSERT(c.stride(1) == 1);
    const CastType ot = cast_type(out.scalar_type());
    const int64_t es = out.element_size();
    char* out_ptr = static_cast<char*>(out.data_ptr());
    char* pre_ptr = act == Activation::kNone ? nullptr : static_cast<char*>(pre.data_ptr());
    float* cp = c.data_ptr<float>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        float* row = cp + r * ldc;
        const int64_t offset = ((m0 + r) * N + n0) * es;
        if (bias) add_bias(row, bias + n0, cols);
        if (pre_ptr) cast_scale(row, CastType::kFloat32, pre_ptr + offset, ot, 1.0f, cols);
        apply_activation(row, act, cols);
        cast_scale(row, CastType::kFloat32, out_ptr + offset, ot, 1.0f, cols);
      }
    });
  }
};

// In place on a 16-bit (or fp32) contiguous matrix y: y = act(y + bias); pre = y + bias.
void epilogue_in_place(const Epilogue& e) {
  const at::Tensor& y = e.out;
  const int64_t M = y.size(0), N = y.size(1);
  if (y.scalar_type() == at::kFloat) {
    at::Tensor c = y;  // the epilogue reads and writes the same fp32 rows: safe, row by row
    e.rows(0, 0, c);
    return;
  }
  const int64_t block = std::max<int64_t>(1, 65536 / std::max<int64_t>(N, 1));
  const CastType yt = cast_type(y.scalar_type());
  at::parallel_for(0, M, block, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(N);
    const int64_t es = y.element_size();
    char* yp = static_cast<char*>(y.data_ptr());
    char* pp = e.act == Activation::kNone ? nullptr : static_cast<char*>(e.pre.data_ptr());
    for (int64_t r = r0; r < r1; ++r) {
      cast_scale(yp + r * N * es, yt, row.data(), CastType::kFloat32, 1.0f, N);
      if (e.bias) add_bias(row.data(), e.bias, N);
      if (pp) cast_scale(row.data(), CastType::kFloat32, pp + r * N * es, yt, 1.0f, N);
      apply_activation(row.data(), e.act, N);
      cast_scale(row.data(), CastType::kFloat32, yp + r * N * es, yt, 1.0f, N);
    }
  });
}

void check_inputs(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "fastlm::matmul: a and b must be 2-D, got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.size(1) == b.size(0), "fastlm::matmul: a is ", a.sizes(), " but b is ", b.sizes(), " (K mismatch)");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "fastlm::matmul: a is ", a.scalar_type(), " but b is ", b.scalar_type());
  cast_type(a.scalar_type());
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == b.size(1), "fastlm::matmul: bias must be (", b.size(1), "), got ",
                bias->sizes());
    cast_type(bias->scalar_type());
  }
}

// ---------------------------------------------------------------- the ops

std::tuple<at::Tensor, at::Tensor> matmul_fwd(const at::Tensor& a, const at::Tensor& b,
                                              const std::optional<at::Tensor>& bias, c10::string_view activation) {
  check_inputs(a, b, bias);
  // torch.autocast falls through to this kernel: the at::mm calls below must not be autocast.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const Activation act = parse_activation(std::string(activation));
  const at::ScalarType dtype = a.scalar_type();
  const int64_t M = a.size(0), N = b.size(1);
  const at::Tensor bias32 = bias ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const bool fused = bias.has_value() || act != Activation::kNone;
  at::Tensor pre = act == Activation::kNone ? at::empty({0}, a.options()) : at::empty({M, N}, a.options());
  Epilogue e{bias ? bias32.data_ptr<float>() : nullptr, act, at::Tensor(), pre};
  if (dtype == at::kFloat && gemm32_onednn(M)) {  // fp32 on oneDNN (gemm32.cpp), the epilogue in place after
    e.out = mm_f32(a, b);
    if (fused) epilogue_in_place(e);
    return {e.out, pre};
  }
  if (use_native_gemm(dtype)) {
    if (act == Activation::kNone && bias && bias->scalar_type() == dtype) {
      return {at::addmm(*bias, a, b), pre};  // the bias added to the fp32 accumulators by the GEMM itself
    }
    e.out = at::mm(a, b).contiguous();
    if (fused) epilogue_in_place(e);
    return {e.out, pre};
  }
  e.out = at::empty({M, N}, a.options());
  if (M <= kSmallM && b.stride(0) == 1 && a.size(1) > 0) {  // decoding: read the 16-bit weight once
    at::Tensor c = small_m_matmul(a, b);
    e.rows(0, 0, c);
    return {e.out, pre};
  }
  gemm_fp32_blocks(a, b, [&](int64_t m0, int64_t n0, at::Tensor c) { e.rows(m0, n0, c); });
  return {e.out, pre};
}

// grad_pre (fp32, M x N) = grad_out * act'(pre).
at::Tensor pre_activation_grad(const at::Tensor& grad_out, const at::Tensor& pre, Activation act) {
  at::Tensor g = grad_out.to(at::kFloat).contiguous();
  if (act == Activation::kNone) return g;  // read only
  if (g.data_ptr() == grad_out.data_ptr()) g = g.clone();  // written in place below
  const at::Tensor p = pre.contiguous();
  const int64_t M = g.size(0), N = g.size(1);
  const CastType pt = cast_type(p.scalar_type());
  const int64_t es = p.element_size();
  const char* pp = static_cast<const char*>(p.data_ptr());
  float* gp = g.data_ptr<float>();
  at::parallel_for(0, M, std::max<int64_t>(1, 65536 / std::max<int64_t>(N, 1)), [&](int64_t r0, int64_t r1) {
    std::vector<float> row(N);
    for (int64_t r = r0; r < r1; ++r) {
      cast_scale(pp + r * N * es, pt, row.data(), CastType::kFloat32, 1.0f, N);
      activation_backward(gp + r * N, row.data(), act, N);
    }
  });
  return g;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> matmul_bwd(const at::Tensor& grad_out, const at::Tensor& a,
                                                          const at::Tensor& b, const std::optional<at::Tensor>& bias,
                                                          const at::Tensor& pre, c10::string_view activation,
                                                          bool needs_grad_a, bool needs_grad_b) {
  check_inputs(a, b, bias);
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const Activation act = parse_activation(std::string(activation));
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == a.size(0) && grad_out.size(1) == b.size(1),
              "fastlm::matmul_bwd: grad_out must be (", a.size(0), ", ", b.size(1), "), got ", grad_out.sizes());
  TORCH_CHECK(act == Activation::kNone || pre.sizes() == grad_out.sizes(),
              "fastlm::matmul_bwd: pre must be ", grad_out.sizes(), ", got ", pre.sizes());
  const at::ScalarType dtype = a.scalar_type();
  const bool native = use_native_gemm(dtype);
  at::Tensor g;  // the pre-activation's gradient, for the GEMMs
  at::Tensor grad_bias = at::empty({0}, a.options());
  if (act == Activation::kNone && native) {  // grad_out as it is: no fp32 round trip
    g = grad_out;
    // (a 16-bit sum accumulates in fp32 inside; asking for an fp32 result would copy grad_out first)
    if (bias) grad_bias = bias->scalar_type() == dtype ? grad_out.sum(0) : at::sum(grad_out, {0}, false, at::kFloat);
  } else {
    const at::Tensor g32 = pre_activation_grad(grad_out, pre, act);
    if (bias) grad_bias = g32.sum(0).to(bias->scalar_type());
    // The native 16-bit GEMM takes the gradient rounded to 16 bits; the fp32 path keeps it in fp32.
    g = native ? g32.to(dtype) : g32;
  }
  at::Tensor grad_a = needs_grad_a ? gemm(g, b.t(), dtype, native) : at::empty({0}, a.options());
  at::Tensor grad_b = at::empty({0}, b.options());
  if (needs_grad_b) {
    // In b's layout: a weight used as b = weight.t() gets a contiguous (N, K) gradient.
    const bool b_transposed = b.stride(0) == 1 && b.stride(1) != 1;
    grad_b = b_transposed ? gemm(g.t(), a, dtype, native).t() : gemm(a.t(), g, dtype, native);
  }
  return {grad_a, grad_b, grad_bias};
}

}  // namespace

// Whether 16-bit GEMMs of this dtype run natively here (else on fp32 panels): other ops with GEMMs
// of their own (the fused LM head + loss) ask, to compute in fp32 where native 16 bits is slow.
bool matmul_cpu_native16(at::ScalarType dtype) { return use_native_gemm(dtype); }

// The same choice with how it was made: "native (cpu feature)", "fp32 (timed)", "native (forced)", ...
std::string matmul_cpu_gemm16_choice(at::ScalarType dtype) {
  const Gemm16Choice c = gemm16_choice(dtype);
  return std::string(c.native ? "native" : "fp32") + " (" + c.how + ")";
}

// matmul_fwd, matmul_bwd: schemas in fastlm/ops/schemas.py.
TORCH_LIBRARY_FRAGMENT(fastlm, m) {
  m.def("matmul_cpu_native16(ScalarType dtype) -> bool", &matmul_cpu_native16);
  m.def("matmul_cpu_gemm16_choice(ScalarType dtype) -> str", &matmul_cpu_gemm16_choice);
}

TORCH_LIBRARY_IMPL(fastlm, CPU, m) {
  m.impl("matmul_fwd", &matmul_fwd);
  m.impl("matmul_bwd", &matmul_bwd);
}

}  // namespace fastlm::cpu
