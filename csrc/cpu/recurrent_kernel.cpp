// Fused gate math of the recurrent layers (see recurrent_kernel.h). Plain loops over the hidden
// units that GCC vectorizes (`omp simd`, fast_exp instead of std::exp), cloned per x86 level
// (AVX-512 / AVX2 / baseline, chosen at load time); no tails to get wrong.
#include "cpu/recurrent_kernel.h"

#include "cpu/fast_math.h"
#include "cpu/vectorize.h"

namespace fastlm::cpu {
namespace {

inline float sigmoid(float x) { return 1.f / (1.f + fast_exp(-x)); }
// tanh(x) = 1 - 2 / (exp(2x) + 1): absolute error ~1e-7, saturates cleanly at +-1.
inline float tanh_(float x) { return 1.f - 2.f / (fast_exp(2.f * x) + 1.f); }

}  // namespace

FASTLM_MULTIVERSION void lstm_cell_fwd_row(const float* xp, const float* hp, float* c, float* h_out, float* saved, int64_t H) {
  float* si = saved;
  float* sf = saved + H;
  float* sg = saved + 2 * H;
  float* so = saved + 3 * H;
  float* sc = saved + 4 * H;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float i = sigmoid(xp[j] + hp[j]);
    const float f = sigmoid(xp[H + j] + hp[H + j]);
    const float g = tanh_(xp[2 * H + j] + hp[2 * H + j]);
    const float o = sigmoid(xp[3 * H + j] + hp[3 * H + j]);
    const float cn = f * c[j] + i * g;
    c[j] = cn;
    h_out[j] = o * tanh_(cn);
    si[j] = i;
    sf[j] = f;
    sg[j] = g;
    so[j] = o;
    sc[j] = cn;
  }
}

FASTLM_MULTIVERSION void gru_cell_fwd_row(const float* xp, const float* hp, const float* h_prev, float* h_out, float* saved, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float r = sigmoid(xp[j] + hp[j]);
    const float z = sigmoid(xp[H + j] + hp[H + j]);
    const float hn = hp[2 * H + j];
    const float n = tanh_(xp[2 * H + j] + r * hn);
    h_out[j] = (1.f - z) * n + z * h_prev[j];
    saved[j] = r;
    saved[H + j] = z;
    saved[2 * H + j] = n;
    saved[3 * H + j] = hn;
  }
}

FASTLM_MULTIVERSION void rnn_cell_fwd_row(const float* xp, const float* hp, float* h_out, int64_t H, bool relu) {
  if (relu) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const float a = xp[j] + hp[j];
      h_out[j] = a > 0.f ? a : 0.f;
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) h_out[j] = tanh_(xp[j] + hp[j]);
  }
}

FASTLM_MULTIVERSION void lstm_cell_bwd_row(const float* saved, const float* c_prev, float* dh, float* dc, float* dgates, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float i = saved[j], f = saved[H + j], g = saved[2 * H + j], o = saved[3 * H + j], c = saved[4 * H + j];
    const float tc = tanh_(c);
    const float dct = dc[j] + dh[j] * o * (1.f - tc * tc);
    dgates[j] = dct * g * i * (1.f - i);
    dgates[H + j] = dct * c_prev[j] * f * (1.f - f);
    dgates[2 * H + j] = dct * i * (1.f - g * g);
    dgates[3 * H + j] = dh[j] * tc * o * (1.f - o);
    dc[j] = dct * f;
    dh[j] = 0.f;
  }
}

FASTLM_MULTIVERSION void gru_cell_bwd_row(const float* saved, const float* h_prev, float* dh, float* dx, float* dhp, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const float r = saved[j], z = saved[H + j], n = saved[2 * H + j], hn = saved[3 * H + j];
    const float d = dh[j];
    const float dan = d * (1.f - z) * (1.f - n * n);
    const float dar = dan * hn * r * (1.f - r);
    const float daz = d * (h_prev[j] - n) * z * (1.f - z);
    dx[j] = dar;
    dx[H + j] = daz;
    dx[2 * H + j] = dan;
    dhp[j] = dar;
    dhp[H + j] = daz;
    dhp[2 * H + j] = dan * r;
    dh[j] = d * z;
  }
}

FASTLM_MULTIVERSION void rnn_cell_bwd_row(const float* h, float* dh, float* da, int64_t H, bool relu) {
  if (relu) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      da[j] = h[j] > 0.f ? dh[j] : 0.f;
      dh[j] = 0.f;
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      da[j] = dh[j] * (1.f - h[j] * h[j]);
      dh[j] = 0.f;
    }
  }
}

}  // namespace fastlm::cpu
