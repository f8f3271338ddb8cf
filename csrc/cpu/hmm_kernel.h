// Hidden Markov model recursions for one sequence (torch-free; float or double).
//
// Scaled forward-backward (Rabiner): alpha_hat_t = alpha_t / (c_1 ... c_t) sums to 1, and
// c_t = p(x_t | x_<t), so the log-likelihood is sum_t log c_t and never underflows however long
// the sequence. beta_hat_t = beta_t / (c_{t+1} ... c_T), so gamma_t = alpha_hat_t * beta_hat_t.
// Viterbi runs in log space. Layouts: trans [S, S] row-major (from, to); emit_t [V, S] (the
// emission matrix transposed, so the column of one token is a contiguous S-vector).
// Inner loops are plain loops over S that the compiler vectorizes.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

// Forced inlining, so each per-ISA clone of the entry points (hmm_kernel.cpp) compiles these loops
// for its own instruction set instead of calling one baseline copy.
#if defined(__GNUC__)
#define FASTLM_HMM_INLINE inline __attribute__((always_inline))
#else
#define FASTLM_HMM_INLINE inline
#endif

namespace fastlm::cpu::hmm {

// next[j] = sum_i prev[i] * trans[i, j]  (row-wise axpy: contiguous, vectorizable)
template <typename T>
FASTLM_HMM_INLINE void vec_mat(const T* prev, const T* trans, int64_t S, T* next) {
  for (int64_t j = 0; j < S; ++j) next[j] = T(0);
  for (int64_t i = 0; i < S; ++i) {
    const T a = prev[i];
    const T* row = trans + i * S;
#pragma omp simd
    for (int64_t j = 0; j < S; ++j) next[j] += a * row[j];
  }
}

// out[i] = sum_j trans[i, j] * w[j]
template <typename T>
FASTLM_HMM_INLINE void mat_vec(const T* trans, const T* w, int64_t S, T* out) {
  for (int64_t i = 0; i < S; ++i) {
    const T* row = trans + i * S;
    T acc = T(0);
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < S; ++j) acc += row[j] * w[j];
    out[i] = acc;
  }
}

// Scales v to sum 1 and returns the sum. A zero sum (an impossible token under the model) leaves
// `fallback` normalised in v instead, so the recursion continues; the caller records log 0 = -inf.
template <typename T>
FASTLM_HMM_INLINE T normalise(T* v, const T* fallback, int64_t S) {
  T sum = T(0);
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < S; ++j) sum += v[j];
  if (sum > T(0)) {
    const T inv = T(1) / sum;
    for (int64_t j = 0; j < S; ++j) v[j] *= inv;
    return sum;
  }
  T fsum = T(0);
  for (int64_t j = 0; j < S; ++j) fsum += fallback[j];
  for (int64_t j = 0; j < S; ++j) v[j] = fsum > T(0) ? fallback[j] / fsum : T(1) / T(S);
  return T(0);
}

// Forward pass. log_c[t] = log p(x_t | x_<t). alpha (T x S) may be null (only log_c wanted); else
// it receives alpha_hat. work: 2 * S scratch.
template <typename T>
FASTLM_HMM_INLINE void forward_scaled(const int64_t* obs, int64_t len, const T* start, const T* trans, const T* emit_t, int64_t S,
                    T* log_c, T* alpha, T* work) {
  T* cur = work;        // alpha_hat_t
  T* pred = work + S;   // p(z_t | x_<t)
  for (int64_t t = 0; t < len; ++t) {
    if (t == 0) {
      for (int64_t j = 0; j < S; ++j) pred[j] = start[j];
    } else {
      vec_mat(cur, trans, S, pred);
    }
    const T* e = emit_t + obs[t] * S;
    for (int64_t j = 0; j < S; ++j) cur[j] = pred[j] * e[j];
    const T c = normalise(cur, pred, S);
    log_c[t] = c > T(0) ? std::log(c) : -std::numeric_limits<T>::infinity();
    if (alpha != nullptr)
      for (int64_t j = 0; j < S; ++j) alpha[t * S + j] = cur[j];
  }
}

// One backward step: w = emit(x_{t+1}) * beta_hat_{t+1} / c_{t+1}; beta_hat_t = trans @ w.
// Returns false when c_{t+1} was 0 (the step is then skipped: beta_hat_t = 1).
template <typename T>
FASTLM_HMM_INLINE bool backward_weights(const T* beta_next, const T* e, T log_c_next, int64_t S, T* w) {
  if (!std::isfinite(log_c_next)) return false;
  const T inv_c = std::exp(-log_c_next);
  for (int64_t j = 0; j < S; ++j) w[j] = e[j] * beta_next[j] * inv_c;
  return true;
}

// Backward pass: beta (T x S) receives beta_hat. work: S scratch.
template <typename T>
FASTLM_HMM_INLINE void backward_scaled(const int64_t* obs, int64_t len, const T* trans, const T* emit_t, const T* log_c, int64_t S,
                     T* beta, T* work) {
  if (len == 0) return;
  for (int64_t j = 0; j < S; ++j) beta[(len - 1) * S + j] = T(1);
  for (int64_t t = len - 2; t >= 0; --t) {
    T* b = beta + t * S;
    if (backward_weights(beta + (t + 1) * S, emit_t + obs[t + 1] * S, log_c[t + 1], S, work)) {
      mat_vec(trans, work, S, b);
    } else {
      for (int64_t j = 0; j < S; ++j) b[j] = T(1);
    }
  }
}

// Expected counts of one sequence, added into start_acc [S], xi_acc [S, S] (sum over t of
// alpha_hat_t[i] * w_{t+1}[j]; the caller multiplies by trans[i, j] once at the end) and
// emit_acc [V, S]. Returns the log-likelihood. alpha: T x S scratch; work: 4 * S scratch.
template <typename T>
FASTLM_HMM_INLINE T expected_counts(const int64_t* obs, int64_t len, const T* start, const T* trans, const T* emit_t, int64_t S,
                  T* log_c, T* alpha, T* work, T* start_acc, T* xi_acc, T* emit_acc) {
  if (len == 0) return T(0);
  forward_scaled(obs, len, start, trans, emit_t, S, log_c, alpha, work);
  T loglik = T(0);
  for (int64_t t = 0; t < len; ++t) loglik += log_c[t];
  if (!std::isfinite(loglik)) return loglik;  // an impossible sequence contributes no counts
  T* beta = work;         // beta_hat_t
  T* beta_prev = work + S;
  T* w = work + 2 * S;
  for (int64_t j = 0; j < S; ++j) beta[j] = T(1);
  for (int64_t t = len - 1; t >= 0; --t) {
    const T* a = alpha + t * S;
    T* e_acc = emit_acc + obs[t] * S;
    for (int64_t j = 0; j < S; ++j) e_acc[j] += a[j] * beta[j];  // gamma_t
    if (t == 0) {
      for (int64_t j = 0; j < S; ++j) start_acc[j] += a[j] * beta[j];
      break;
    }
    // w = emit(x_t) * beta_hat_t / c_t; xi_{t-1}(i, j) ~ alpha_hat_{t-1}[i] * w[j]; beta_hat_{t-1} = trans @ w
    backward_weights(beta, emit_t + obs[t] * S, log_c[t], S, w);
    const T* a_prev = alpha + (t - 1) * S;
    for (int64_t i = 0; i < S; ++i) {
      const T ai = a_prev[i];
      T* row = xi_acc + i * S;
#pragma omp simd
      for (int64_t j = 0; j < S; ++j) row[j] += ai * w[j];
    }
    mat_vec(trans, w, S, beta_prev);
    for (int64_t j = 0; j < S; ++j) beta[j] = beta_prev[j];
  }
  return loglik;
}

// Viterbi in log space: path [len] and the log-probability of the best path. lattice: len x S
// scratch (delta_t); work: 2 * S scratch. The forward sweep is a pure max-plus product (vectorizes);
// as in hmmlearn, no back-pointers are kept: the trace-back recomputes the argmax for the chosen
// state only (O(T * S) extra), with the same sums, so it finds the same state. Ties go to the
// lowest state index.
template <typename T>
FASTLM_HMM_INLINE T viterbi(const int64_t* obs, int64_t len, const T* log_start, const T* log_trans, const T* log_emit_t, int64_t S,
          int64_t* path, T* lattice, T* work) {
  if (len == 0) return T(0);
  T* next = work;
  const T* e0 = log_emit_t + obs[0] * S;
  for (int64_t j = 0; j < S; ++j) lattice[j] = log_start[j] + e0[j];
  const T neg_inf = -std::numeric_limits<T>::infinity();
  for (int64_t t = 1; t < len; ++t) {
    const T* delta = lattice + (t - 1) * S;
    for (int64_t j = 0; j < S; ++j) next[j] = neg_inf;
    for (int64_t i = 0; i < S; ++i) {  // row-wise so the inner loop is contiguous
      const T d = delta[i];
      const T* row = log_trans + i * S;
#pragma omp simd
      for (int64_t j = 0; j < S; ++j) {
        const T v = d + row[j];
        next[j] = v > next[j] ? v : next[j];
      }
    }
    const T* e = log_emit_t + obs[t] * S;
    T* out = lattice + t * S;
    for (int64_t j = 0; j < S; ++j) out[j] = next[j] + e[j];
  }
  const T* last = lattice + (len - 1) * S;
  int64_t best = 0;
  for (int64_t j = 1; j < S; ++j)
    if (last[j] > last[best]) best = j;
  const T logprob = last[best];
  path[len - 1] = best;
  for (int64_t t = len - 1; t > 0; --t) {
    const T* delta = lattice + (t - 1) * S;
    int64_t arg = 0;
    T top = neg_inf;
    for (int64_t i = 0; i < S; ++i) {
      const T v = delta[i] + log_trans[i * S + best];
      if (v > top) {
        top = v;
        arg = i;
      }
    }
    best = arg;
    path[t - 1] = best;
  }
  return logprob;
}

// Entry points compiled once per instruction set (FASTLM_MULTIVERSION, in hmm_kernel.cpp).
#define FASTLM_HMM_DECLARE(T)                                                                                   \
  void forward_scaled_seq(const int64_t* obs, int64_t len, const T* start, const T* trans, const T* emit_t,      \
                          int64_t S, T* log_c, T* alpha, T* work);                                              \
  void backward_scaled_seq(const int64_t* obs, int64_t len, const T* trans, const T* emit_t, const T* log_c,     \
                           int64_t S, T* beta, T* work);                                                        \
  T expected_counts_seq(const int64_t* obs, int64_t len, const T* start, const T* trans, const T* emit_t,        \
                        int64_t S, T* log_c, T* alpha, T* work, T* start_acc, T* xi_acc, T* emit_acc);          \
  T viterbi_seq(const int64_t* obs, int64_t len, const T* log_start, const T* log_trans, const T* log_emit_t,    \
                int64_t S, int64_t* path, T* lattice, T* work);
FASTLM_HMM_DECLARE(float)
FASTLM_HMM_DECLARE(double)
#undef FASTLM_HMM_DECLARE

}  // namespace fastlm::cpu::hmm
