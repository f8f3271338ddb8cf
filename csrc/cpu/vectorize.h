// Run-time choice of vector code for the CPU kernels, without torch.
//
// FASTLM_MULTIVERSION compiles a function once per instruction set (AVX-512, AVX2+FMA, baseline)
// and picks the best one when the library is loaded (GCC function multi-versioning, ifunc).
// Inner loops use `#pragma omp simd reduction(...)` so fp32 reductions vectorize without -ffast-math.
// On aarch64 NEON is the baseline, so the plain build is already vectorized.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define FASTLM_MULTIVERSION __attribute__((target_clones("arch=skylake-avx512", "arch=haswell", "default")))
#else
#define FASTLM_MULTIVERSION
#endif
