// vpdpbusd (acc += 4-byte dot products of unsigned a x signed b, in int32 lanes) and vdpbf16ps as inline asm.
// GCC 12 wraps the intrinsics' in-place accumulator in register copies (and stack spills in large
// tiles) in the hot loop, which about halves a VNNI tile's speed; the asm keeps it in place.
#pragma once
#include <immintrin.h>

namespace fastlm::cpu {

__attribute__((target("avx512f,avx512vnni"), always_inline)) inline __m512i dpbusd(__m512i acc, __m512i u8, __m512i s8) {
  asm("vpdpbusd %[s8], %[u8], %[acc]" : [acc] "+v"(acc) : [u8] "v"(u8), [s8] "v"(s8));
  return acc;
}

// The VEX (AVX-VNNI) form: VEX encodes only ymm0-15 ("x"); {vex} selects it over the EVEX form.
__attribute__((target("avx2,avxvnni"), always_inline)) inline __m256i dpbusd_vex(__m256i acc, __m256i u8, __m256i s8) {
  asm("%{vex%} vpdpbusd %[s8], %[u8], %[acc]" : [acc] "+x"(acc) : [u8] "x"(u8), [s8] "x"(s8));
  return acc;
}

// vdpbf16ps: acc (16 fp32) += a[2i] * b[2i] + a[2i + 1] * b[2i + 1] (bf16 pairs), kept in place like dpbusd.
__attribute__((target("avx512f,avx512bf16"), always_inline)) inline __m512 dpbf16(__m512 acc, __m512i a, __m512i b) {
  asm("vdpbf16ps %[b], %[a], %[acc]" : [acc] "+v"(acc) : [a] "v"(a), [b] "v"(b));
  return acc;
}

}  // namespace fastlm::cpu
