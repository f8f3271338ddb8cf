#include "cpu/distill_kernel.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/fast_math.h"
#include "cpu/vectorize.h"

namespace fastlm::cpu {
namespace {

constexpr int kKL = 0, kReverseKL = 1;

// log(x) for normal x > 0, ~1 ulp (Cephes logf), branch-free so `omp simd` loops vectorize it.
inline float fast_log(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  float e = static_cast<float>(((bits >> 23) & 0xff) - 127);
  bits = (bits & 0x007fffff) | 0x3f800000;
  float m;
  std::memcpy(&m, &bits, sizeof(m));  // x = m 2^e, m in [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1.f : e;
  const float f = m - 1.f, z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z - 2.12194440e-4f * e - 0.5f * z;
  return f + y + 0.693359375f * e;
}

// logsumexp of x[0..v) * scale.
FASTLM_MULTIVERSION float scaled_lse(const float* x, int64_t v, float scale) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < v; ++i) m = x[i] > m ? x[i] : m;
  m *= scale;
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < v; ++i) s += fast_exp(x[i] * scale - m);
  return m + std::log(s);
}

// The logsumexps of a[0..v) * scale and b[0..v) * scale, each pass reading both rows.
FASTLM_MULTIVERSION void scaled_lse2(const float* a, const float* b, int64_t v, float scale, float* lse_a,
                                     float* lse_b) {
  float ma = -std::numeric_limits<float>::infinity(), mb = ma;
#pragma omp simd reduction(max : ma, mb)
  for (int64_t i = 0; i < v; ++i) {
    ma = a[i] > ma ? a[i] : ma;
    mb = b[i] > mb ? b[i] : mb;
  }
  ma *= scale;
  mb *= scale;
  float sa = 0.f, sb = 0.f;
#pragma omp simd reduction(+ : sa, sb)
  for (int64_t i = 0; i < v; ++i) {
    sa += fast_exp(a[i] * scale - ma);
    sb += fast_exp(b[i] * scale - mb);
  }
  *lse_a = ma + std::log(sa);
  *lse_b = mb + std::log(sb);
}

}  // namespace

FASTLM_MULTIVERSION float distill_row_full(const float* s, const float* t, int64_t v, int loss, float beta,
                                           float temperature, float g, float* grad, float* work) {
  const float inv_t = 1.f / temperature;
  float lse_q, lse_p;
  scaled_lse2(s, t, v, inv_t, &lse_q, &lse_p);
  const float gs = g * temperature;  // d(T^2 L)/ds = T dL/da
  float total = 0.f;
  if (loss == kKL) {
    if (grad) {  // loss and gradient in one pass: p and q made once per token
#pragma omp simd reduction(+ : total)
      for (int64_t i = 0; i < v; ++i) {
        const float lp = t[i] * inv_t - lse_p, lq = s[i] * inv_t - lse_q;
        const float p = fast_exp(lp);
        total += p * (lp - lq);
        grad[i] = gs * (fast_exp(lq) - p);
      }
    } else {
#pragma omp simd reduction(+ : total)
      for (int64_t i = 0; i < v; ++i) {
        const float lp = t[i] * inv_t - lse_p, lq = s[i] * inv_t - lse_q;
        total += fast_exp(lp) * (lp - lq);
      }
    }
  } else if (loss == kReverseKL) {
#pragma omp simd reduction(+ : total)
    for (int64_t i = 0; i < v; ++i) {
      const float lp = t[i] * inv_t - lse_p, lq = s[i] * inv_t - lse_q;
      total += fast_exp(lq) * (lq - lp);
    }
    if (grad) {
#pragma omp simd
      for (int64_t i = 0; i < v; ++i) {
        const float lp = t[i] * inv_t - lse_p, lq = s[i] * inv_t - lse_q;
        grad[i] = gs * fast_exp(lq) * (lq - lp - total);
      }
    }
  } else {  // generalized JSD: L = beta KL(p||m) + (1-beta) KL(q||m); dL/da = q (h - sum q h), h = (1-beta)(lq - lm)
    const float b = beta, c = 1.f - beta;
    float qh = 0.f;
#pragma omp simd reduction(+ : total, qh)
    for (int64_t i = 0; i < v; ++i) {
      const float lp = t[i] * inv_t - lse_p, lq = s[i] * inv_t - lse_q;
      const float p = fast_exp(lp), q = fast_exp(lq);
      const float lm = fast_log(b * p + c * q);
      work[i] = lq - lm;
      total += b * p * (lp - lm) + c * q * (lq - lm);
      qh += q * (lq - lm);
    }
    if (grad) {
      qh *= c;
#pragma omp simd
      for (int64_t i = 0; i < v; ++i) grad[i] = gs * fast_exp(s[i] * inv_t - lse_q) * (c * work[i] - qh);
    }
  }
  return total * temperature * temperature;
}

FASTLM_MULTIVERSION float distill_row_topk(const float* s, const float* lp, const int64_t* index, int64_t v,
                                           int64_t k, int loss, float beta, float temperature, float g, float* grad,
                                           float* work) {
  const float inv_t = 1.f / temperature;
  const float lse_q = scaled_lse(s, v, inv_t);
  // The student's tail: its logsumexp without the teacher's top-k tokens (exact, no 1 - sum cancellation).
  std::memcpy(work, s, sizeof(float) * v);
  for (int64_t b = 0; b < k; ++b) work[index[b]] = -1e30f;
  const float lq_tail = scaled_lse(work, v, inv_t) - lse_q;
  std::vector<float> lq(k + 1), u(k + 1), w(k + 1);
  for (int64_t b = 0; b < k; ++b) lq[b] = s[index[b]] * inv_t - lse_q;
  lq[k] = lq_tail;
  float total = 0.f;
  if (loss == kKL) {
    for (int64_t b = 0; b <= k; ++b) {
      const float p = std::exp(lp[b]);
      total += p > 0.f ? p * (lp[b] - lq[b]) : 0.f;
      u[b] = 1.f;
      w[b] = p;
    }
  } else if (loss == kReverseKL) {
    for (int64_t b = 0; b <= k; ++b) {
      const float q = std::exp(lq[b]);
      total += q > 0.f ? q * (lq[b] - lp[b]) : 0.f;
    }
    for (int64_t b = 0; b <= k; ++b) u[b] = lq[b] - lp[b] - total, w[b] = 0.f;
  } else {
    const float c = 1.f - beta;
    float qh = 0.f;
    for (int64_t b = 0; b <= k; ++b) {
      const float p = std::exp(lp[b]), q = std::exp(lq[b]);
      const float lm = std::log(beta * p + c * q);
      total += (p > 0.f ? beta * p * (lp[b] - lm) : 0.f) + (q > 0.f ? c * q * (lq[b] - lm) : 0.f);
      u[b] = c * (lq[b] - lm);
      qh += q * u[b];
    }
    for (int64_t b = 0; b <= k; ++b) u[b] -= qh, w[b] = 0.f;
  }
  if (grad) {
    const float gs = g * temperature, ut = u[k], wt = w[k];
#pragma omp simd
    for (int64_t i = 0; i < v; ++i) {
      const float lqi = s[i] * inv_t - lse_q;
      grad[i] = gs * (fast_exp(lqi) * ut - wt * fast_exp(lqi - lq_tail));
    }
    for (int64_t b = 0; b < k; ++b) grad[index[b]] = gs * (std::exp(lq[b]) * u[b] - w[b]);
  }
  return total * temperature * temperature;
}

}  // namespace fastlm::cpu
