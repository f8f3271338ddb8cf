// The HMM recursions of hmm_kernel.h for float and double, each compiled per instruction set
// (AVX-512 / AVX2+FMA / baseline, chosen when the library loads).
#include "cpu/hmm_kernel.h"

#include "cpu/vectorize.h"

namespace fastlm::cpu::hmm {

#define FASTLM_HMM_DEFINE(T)                                                                                     \
  FASTLM_MULTIVERSION void forward_scaled_seq(const int64_t* obs, int64_t len, const T* start, const T* trans,    \
                                              const T* emit_t, int64_t S, T* log_c, T* alpha, T* work) {          \
    forward_scaled(obs, len, start, trans, emit_t, S, log_c, alpha, work);                                       \
  }                                                                                                              \
  FASTLM_MULTIVERSION void backward_scaled_seq(const int64_t* obs, int64_t len, const T* trans, const T* emit_t, \
                                               const T* log_c, int64_t S, T* beta, T* work) {                   \
    backward_scaled(obs, len, trans, emit_t, log_c, S, beta, work);                                              \
  }                                                                                                              \
  FASTLM_MULTIVERSION T expected_counts_seq(const int64_t* obs, int64_t len, const T* start, const T* trans,     \
                                            const T* emit_t, int64_t S, T* log_c, T* alpha, T* work,             \
                                            T* start_acc, T* xi_acc, T* emit_acc) {                              \
    return expected_counts(obs, len, start, trans, emit_t, S, log_c, alpha, work, start_acc, xi_acc, emit_acc);  \
  }                                                                                                              \
  FASTLM_MULTIVERSION T viterbi_seq(const int64_t* obs, int64_t len, const T* log_start, const T* log_trans,     \
                                    const T* log_emit_t, int64_t S, int64_t* path, T* lattice, T* work) {     \
    return viterbi(obs, len, log_start, log_trans, log_emit_t, S, path, lattice, work);                             \
  }

FASTLM_HMM_DEFINE(float)
FASTLM_HMM_DEFINE(double)

}  // namespace fastlm::cpu::hmm
