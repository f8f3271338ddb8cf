"""The schema of every torch.ops.fastlm op that has a plain-torch fallback: written here once.

fastlm/ops/_library.py defines these schemas (register_op). The C++ extension only registers
kernels for them (TORCH_LIBRARY_IMPL in csrc/), and the dispatcher checks each C++ kernel's
signature against the schema here; tests/ops/test_schemas.py checks it again, op by op.
Native-only helpers without a fallback (int8_cpu_kernels, matmul_cpu_native16 and _gemm16_choice, the CUDA
int8_gemv) are defined next to their C++ code instead.
"""

SCHEMAS = {
    # RMSNorm / LayerNorm over the last dimension: (y, rstd) / (y, mean, rstd), statistics fp32 with
    # shape x.shape[:-1]. RMSNorm's y in out_dtype (default x's); its grad_y may be in y's dtype.
    "rms_norm_fwd": "rms_norm_fwd(Tensor x, Tensor weight, float eps, ScalarType? out_dtype=None) -> (Tensor, Tensor)",
    "rms_norm_bwd": "rms_norm_bwd(Tensor grad_y, Tensor x, Tensor weight, Tensor rstd) -> (Tensor, Tensor)",
    "add_rms_norm_fwd": "add_rms_norm_fwd(Tensor x, Tensor branch, Tensor weight, float eps, "
                        "ScalarType? out_dtype=None) -> (Tensor, Tensor, Tensor)",
    "add_rms_norm_bwd": "add_rms_norm_bwd(Tensor grad_sum, Tensor grad_y, Tensor x_sum, Tensor weight, Tensor rstd, "
                        "ScalarType branch_dtype) -> (Tensor, Tensor, Tensor)",
    "layer_norm_fwd": "layer_norm_fwd(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor)",
    "layer_norm_bwd": ("layer_norm_bwd(Tensor grad_y, Tensor x, Tensor weight, Tensor mean, Tensor rstd) "
                       "-> (Tensor, Tensor, Tensor)"),
    # Rotary embedding (rotate-half layout) of x (B, T, H, D) by angles cos/sin (T, D/2) or (B, T, D/2);
    # inverse=True rotates back (the backward). fp32 math; output in x's dtype and layout.
    "rope_fwd": "rope_fwd(Tensor x, Tensor cos, Tensor sin, bool inverse) -> Tensor",
    # out = act(gate) * up; act 0 = SiLU (SwiGLU), 1 = exact GELU, 2 = tanh GELU (GeGLU). The backward
    # returns (grad_gate, grad_up), recomputing act(gate).
    "gated_act_fwd": "gated_act_fwd(Tensor gate, Tensor up, int act) -> Tensor",
    "gated_act_bwd": "gated_act_bwd(Tensor grad, Tensor gate, Tensor up, int act) -> (Tensor, Tensor)",
    "gated_act_fwd_packed": "gated_act_fwd_packed(Tensor h, int act) -> Tensor",
    "gated_act_bwd_packed": "gated_act_bwd_packed(Tensor grad, Tensor h, int act) -> Tensor",
    # Per-row cross-entropy of logits (N, V) against labels (N,): (loss (N,) fp32, lse (N,) fp32),
    # loss = lse - (1 - label_smoothing) x[label] - label_smoothing mean(x) + z_loss lse^2; 0 where
    # ignored. The backward gives grad_logits (N, V) in logits' dtype for per-row grad_loss (N,).
    "cross_entropy_fwd": ("cross_entropy_fwd(Tensor logits, Tensor labels, int ignore_index, float label_smoothing, "
                          "float z_loss) -> (Tensor, Tensor)"),
    "cross_entropy_bwd": ("cross_entropy_bwd(Tensor grad_loss, Tensor logits, Tensor labels, Tensor lse, "
                          "int ignore_index, float label_smoothing, float z_loss) -> Tensor"),
    # Cross-entropy of hidden @ weight^T without the logits, in chunks of rows (no C++ kernel: the
    # plain-torch composition is the CPU implementation). See linear_cross_entropy.py.
    "linear_cross_entropy_fwd": ("linear_cross_entropy_fwd(Tensor hidden, Tensor weight, Tensor labels, "
                                 "int ignore_index, float label_smoothing, float z_loss, int chunk_size, "
                                 "bool grads_in_forward) -> (Tensor, Tensor, Tensor, Tensor)"),
    "linear_cross_entropy_bwd": ("linear_cross_entropy_bwd(Tensor grad_loss, Tensor hidden, Tensor weight, "
                                 "Tensor labels, Tensor lse, Tensor grad_hidden_unit, Tensor grad_weight_unit, "
                                 "int ignore_index, float label_smoothing, float z_loss, int chunk_size) "
                                 "-> (Tensor, Tensor)"),
    # Distillation of one chunk (fastlm/ops/reference_distill.py): student_logits (n, V); teacher logits (n, V)
    # when teacher_index is None, else tempered log-probabilities (n, k + 1) of the top-k bins at
    # teacher_index (n, k) plus the tail. loss 0 kl, 1 reverse_kl, 2 jsd. -> (per-row loss (n,) fp32,
    # d sum(row_grad * loss) / d student_logits (n, V) in their dtype, empty unless compute_grad).
    "distill_loss": ("distill_loss(Tensor student_logits, Tensor teacher, Tensor? teacher_index, Tensor row_grad, "
                     "int loss, float beta, float temperature, bool compute_grad) -> (Tensor, Tensor)"),
    # Distillation loss of hidden @ weight^T in chunks of rows (no C++ kernel: the plain-torch composition
    # around distill_loss is the implementation). See linear_distill.py.
    # labels (N,) with ce_weight > 0: ce_weight x cross-entropy of the student's logits added per row, same pass.
    "linear_distill_fwd": ("linear_distill_fwd(Tensor hidden, Tensor weight, Tensor teacher, Tensor? teacher_weight, "
                           "Tensor? teacher_index, Tensor row_weight, Tensor? labels, int loss, float beta, "
                           "float temperature, int top_k, int chunk_size, float ce_weight, bool grads_in_forward) "
                           "-> (Tensor, Tensor, Tensor)"),
    "linear_distill_bwd": ("linear_distill_bwd(Tensor grad_loss, Tensor hidden, Tensor weight, Tensor teacher, "
                           "Tensor? teacher_weight, Tensor? teacher_index, Tensor row_weight, Tensor? labels, "
                           "Tensor grad_hidden_unit, Tensor grad_weight_unit, int loss, float beta, float temperature, "
                           "int top_k, int chunk_size, float ce_weight) -> (Tensor, Tensor)"),
    # Hashed window sums (hashed maximum-entropy features): theta (B,) float, hashes (N, F) int64 in
    # [-1, B) (-1: no feature), vocab_size V <= B: out (N, V)[n, v] = sum_f theta[(hashes[n, f] + v) mod B]
    # (fp32 math, theta's dtype). The backward scatters grad_out (N, V) back: grad_theta (B,) fp32.
    "hashed_window_sum_fwd": "hashed_window_sum_fwd(Tensor theta, Tensor hashes, int vocab_size) -> Tensor",
    "hashed_window_sum_bwd": "hashed_window_sum_bwd(Tensor grad_out, Tensor hashes, int num_buckets) -> Tensor",
    # Watermark bias (fastlm.accountability.watermark): logits (B, V) float, seeds (B,) and codes (V,) int64
    # in [0, 2^32): out = logits + delta where lowbias32(seeds[b] ^ codes[v]) < threshold (fp32 math).
    "watermark_bias": "watermark_bias(Tensor logits, Tensor seeds, Tensor codes, int threshold, float delta) -> Tensor",
    # out = act(a @ b + bias) (fp32 math); pre = a @ b + bias when act != "none" (else empty), for the
    # backward. a (M, K), b (K, N) any strides, bias (N,) or None. The backward returns (grad_a,
    # grad_b, grad_bias); a gradient that is not needed (or bias None) comes back empty.
    # LoRA linear (fastlm/ops/lora_matmul.py): (out, xa) with out = x W^T + bias + scale xa B^T and
    # xa = (lora_x or x) A^T; the backward returns (grad_x, grad_w, grad_bias, grad_lora_x, grad_a, grad_b),
    # empty where needs ([x, w, lora_x, a, b]) is false.
    "lora_matmul_fwd": ("lora_matmul_fwd(Tensor x, Tensor w, Tensor? bias, Tensor? lora_x, Tensor lora_a, "
                        "Tensor lora_b, float scale) -> (Tensor, Tensor)"),
    "lora_matmul_bwd": ("lora_matmul_bwd(Tensor grad_out, Tensor x, Tensor w, Tensor? lora_x, Tensor lora_a, "
                        "Tensor lora_b, Tensor xa, float scale, bool has_bias, bool[] needs) "
                        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"),
    "matmul_fwd": "matmul_fwd(Tensor a, Tensor b, Tensor? bias, str activation) -> (Tensor, Tensor)",
    "matmul_bwd": ("matmul_bwd(Tensor grad_out, Tensor a, Tensor b, Tensor? bias, Tensor pre, str activation, "
                   "bool needs_grad_a, bool needs_grad_b) -> (Tensor, Tensor, Tensor)"),
    # out = scale * x, converted to out's dtype (fp32 math). Same number of elements.
    "cast_scale_": "cast_scale_(Tensor(a!) out, Tensor x, float scale) -> ()",
    # One AdamW step (decoupled weight decay) of every tensor in the lists, in place: params fp32, or bf16
    # with an fp32 master (masters[i] empty for fp32 params); grads fp32 or bf16; exp_avgs / exp_avg_sqs fp32;
    # steps[i] the step count, a 0-d fp32 CPU tensor incremented by the op (bias corrections use the new
    # count), as torch's state["step"]. See fastlm/ops/reference_adamw.py.
    "adamw_step_": ("adamw_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
                    "Tensor(d!)[] masters, Tensor(e!)[] steps, float lr, float beta1, float beta2, float eps, "
                    "float weight_decay) -> ()"),
    # x (R, K) contiguous float -> (q (R, K) int8, scale (R, K // group_size) fp32): symmetric absmax.
    "int8_quantize": "int8_quantize(Tensor x, int group_size) -> (Tensor, Tensor)",
    # a (M, K) int8 @ b (K, N) int8 in int32, then * a_scale (M,) * b_scale (N,) + bias (N,) (fp32
    # vectors), in out_dtype; out_dtype int32 (no scales, no bias): the raw sums.
    "int8_matmul": ("int8_matmul(Tensor a, Tensor b, Tensor? a_scale, Tensor? b_scale, Tensor? bias, "
                    "ScalarType out_dtype) -> Tensor"),
    # x (M, K) float @ (w (N, K) int8 * w_scale (N, K // group_size) fp32)^T + bias (N,) fp32, in x's dtype.
    "int8_weight_matmul": ("int8_weight_matmul(Tensor x, Tensor w, Tensor w_scale, Tensor? bias, int group_size) "
                           "-> Tensor"),
    # 2:4 sparse weights: x (M, K) fp32 @ W^T + bias (N,) fp32 -> (M, N) fp32, W (N, K) stored compressed:
    # values (N, 2 * G) fp32 (two per group of 4 input columns, G = ceil(K / 4)) and meta (N, ceil(G / 2))
    # uint8 (per group a nibble i0 | i1 << 2, the kept columns' offsets in the group; group 2j low nibble).
    "sparse24_matmul": "sparse24_matmul(Tensor x, Tensor values, Tensor meta, int in_features, Tensor? bias) -> Tensor",
    # FlashAttention: (out, lse). Dense q (B, Sq, H, D), k/v (B, Sk, Hkv, D); with cu_seqlens (n + 1
    # offsets of packed sequences) q/k/v are (total, heads, D). lse is fp32 (B, H, Sq) or (H, total).
    # window_* < 0: unbounded; causal is window_right = 0, aligned bottom-right. max_seqlen: the
    # longest document with cu_seqlens (0: the kernel computes it).
    "attention_fwd": ("attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? cu_seqlens, int max_seqlen, "
                      "float softmax_scale, int window_left, int window_right) -> (Tensor, Tensor)"),
    "attention_bwd": ("attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
                      "Tensor? grad_lse, Tensor? cu_seqlens, int max_seqlen, float softmax_scale, int window_left, "
                      "int window_right) -> (Tensor, Tensor, Tensor)"),
    # Hidden Markov models (fastlm/ops/hmm.py): a batch obs [B, T] int64 padded, row b has lengths[b] tokens;
    # parameters are probabilities startprob [S], transmat [S, S], emissionprob [S, V] (float32/64).
    # Scaled forward: (log_c [B, T] with log_c[b, t] = log p(x_t | x_<t) (0 on padding), alpha_hat
    # [B, T, S] (rows sum to 1) or empty when not store_alpha). Scaled backward: beta_hat [B, T, S]
    # = beta_t / prod_{u>t} c_u. Viterbi: (path [B, T] int64, best log-probability [B]). Expected
    # counts for Baum-Welch: (loglik [B], start [S], transitions [S, S], emissions [S, V]).
    "hmm_forward_scaled": ("hmm_forward_scaled(Tensor obs, Tensor lengths, Tensor startprob, Tensor transmat, "
                           "Tensor emissionprob, bool store_alpha) -> (Tensor, Tensor)"),
    "hmm_backward_scaled": ("hmm_backward_scaled(Tensor obs, Tensor lengths, Tensor transmat, Tensor emissionprob, "
                            "Tensor log_c) -> Tensor"),
    "hmm_viterbi": ("hmm_viterbi(Tensor obs, Tensor lengths, Tensor startprob, Tensor transmat, "
                    "Tensor emissionprob) -> (Tensor, Tensor)"),
    "hmm_expected_counts": ("hmm_expected_counts(Tensor obs, Tensor lengths, Tensor startprob, Tensor transmat, "
                            "Tensor emissionprob) -> (Tensor, Tensor, Tensor, Tensor)"),
    # The recurrence of one RNN / LSTM / GRU layer over a sequence (fastlm/ops/reference_recurrent.py):
    # xproj (T, B, G*H) = x @ W_ih^T + b_ih for all steps; mode 0 LSTM, 1 GRU, 2 RNN tanh, 3 RNN relu;
    # batch_sizes (T,) int64 active leading rows per step (empty: all). -> (out (T, B, H), h_n, c_n,
    # saved gates). The backward returns (grad_xproj, grad_h0, grad_c0, grad_w_hh, grad_b_hh).
    "recurrent_fwd": ("recurrent_fwd(Tensor xproj, Tensor w_hh, Tensor? b_hh, Tensor h0, Tensor c0, "
                      "Tensor batch_sizes, int mode) -> (Tensor, Tensor, Tensor, Tensor)"),
    "recurrent_bwd": ("recurrent_bwd(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor xproj, Tensor w_hh, "
                      "Tensor? b_hh, Tensor h0, Tensor c0, Tensor out, Tensor saved, Tensor batch_sizes, int mode) "
                      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)"),
    # One decoding step through a stack of layers (no autograd): x (B, I), weights [w_ih, w_hh, b_ih, b_hh]
    # per layer (an empty bias: none), h0/c0 (L, B, H) -> (out (B, H), h_n, c_n).
    "recurrent_step": "recurrent_step(Tensor x, Tensor[] weights, Tensor h0, Tensor c0, int mode) -> (Tensor, Tensor, Tensor)",
}
