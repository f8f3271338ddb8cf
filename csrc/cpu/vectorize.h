// Run-time choice of vector code for the CPU kernels, without torch.
//
// FASTLM_MULTIVERSION compiles a function once per instruction set (AVX-512, AVX2+FMA, baseline)
// and picks the best one when the library is loaded (GCC function multi-versioning, ifunc).
// The clones are x86-64 ISA levels (v4: AVX-512 F/BW/CD/DQ/VL; v3: AVX2, FMA, F16C), chosen by
// CPU features. Not "arch=skylake-avx512" etc.: those are chosen by CPU *model*, so a newer or
// virtualized CPU with every feature would still get the baseline clone.
// Inner loops use `#pragma omp simd reduction(...)` so fp32 reductions vectorize without -ffast-math.
// On aarch64 NEON is the baseline, so the plain build is already vectorized.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define FASTLM_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTLM_MULTIVERSION
#endif
