// Fused per-step gate math of one RNN / LSTM / GRU layer on fp32 rows (torch-free). The GEMMs
// around it (h @ W_hh^T per step, the weight gradients) are the torch glue's (recurrent.cpp).
// Gate order and bias pair are torch.nn's: LSTM (i, f, g, o), GRU (r, z, n) with
// n = tanh(x_n + r * (W_hn h + b_hn)). xp: the input projection of the row (bias b_ih included),
// hp: h_prev @ W_hh^T + b_hh. Saved layouts: LSTM [i f g o c'] (5H), GRU [r z n hn] (4H).
#pragma once
#include <cstdint>

namespace fastlm::cpu {

enum RecurrentMode : int { kLstm = 0, kGru = 1, kRnnTanh = 2, kRnnRelu = 3 };

// Forward of one row: writes h' to h_out (and c' over c for the LSTM) and the saved gates.
void lstm_cell_fwd_row(const float* xp, const float* hp, float* c, float* h_out, float* saved, int64_t H);
void gru_cell_fwd_row(const float* xp, const float* hp, const float* h_prev, float* h_out, float* saved, int64_t H);
void rnn_cell_fwd_row(const float* xp, const float* hp, float* h_out, int64_t H, bool relu);

// Backward of one row. dh: the total gradient of h' on entry, its direct share of dh_prev on exit
// (the W_hh share is added by a GEMM afterwards). LSTM: dc is dc' on entry and dc_prev on exit;
// dgates gets the pre-activation gradients (for both the x and the h projection). GRU: dx (3H) and
// dhp (3H) differ in the n block (dhp_n = dx_n * r).
void lstm_cell_bwd_row(const float* saved, const float* c_prev, float* dh, float* dc, float* dgates, int64_t H);
void gru_cell_bwd_row(const float* saved, const float* h_prev, float* dh, float* dx, float* dhp, int64_t H);
void rnn_cell_bwd_row(const float* h, float* dh, float* da, int64_t H, bool relu);

}  // namespace fastlm::cpu
