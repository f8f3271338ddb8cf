// FlashAttention-2 on the CPU (torch-free). The torch glue (attention.cpp) checks the inputs,
// allocates, and spreads the work items below over threads.
//
// Forward, per (sequence, q head, block of kBlockQ queries): streamed blocks of kBlockK keys are
// multiplied with the transposed Q tile into S^T (keys in rows, one query per vector lane, so
// the softmax max/sum are vertical vector ops), masked where the block crosses the causal/window
// boundary, and folded into the output with an online softmax; blocks that the mask hides entirely
// are never visited. K and V are read as fp32 rows (converted per work item, or read in place).
// The logsumexp of each row is saved.
// Backward, per (sequence, kv head, chunk of key blocks): for each key block, loop over the q heads
// of the group and the query blocks that see it; recompute P = exp(S - lse) and accumulate
// dV += P^T dO, dK += dS^T Q in registers/L1 tiles and dQ += dS K into the chunk's own fp32
// buffer (summed afterwards in a fixed order: deterministic, no atomics). Nothing S x S is stored.
//
// All matrix products are one register-blocked micro-kernel (gemm_acc) on fp32 tiles whose width
// is padded to a multiple of 16 (head_dim 40 -> 48, ...); padded lanes are zero.
// bf16 inputs on CPUs with AVX512-BF16 run attention_bf16_kernel.h instead (same blocking, bf16
// tiles and products); this fp32 path serves fp32 inputs and CPUs without it.
#pragma once
#include <cstdint>

namespace fastlm::cpu::attn {

constexpr int64_t kBlockQ = 64;
constexpr int64_t kBlockK = 64;
// Long sums (dK, dV, dQ, the output) add block products into a partial sum of the last kFold
// blocks, and that into the total every kFold blocks (see attention_kernel.cpp).
constexpr int64_t kFold = 16;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

enum class DType { kFloat, kBFloat16 };

// A (sequence, position, head, dim) tensor with unit stride along dim: element offset of
// (sequence b, position i, head h) = b * batch_stride + (start[b] + i) * pos_stride + h * head_stride,
// where start is Problem::q_start for q, out, dO, dQ and Problem::k_start for k, v, dK, dV.
struct View {
  void* data;
  DType dtype;
  int64_t batch_stride, pos_stride, head_stride;
};

struct Problem {
  int64_t num_seqs, heads, kv_heads, head_dim, dp;  // dp: head_dim rounded up to 16
  const int64_t* q_start;                           // per sequence (0 for dense batches)
  const int64_t* q_len;
  const int64_t* k_start;
  const int64_t* k_len;
  const int64_t* q_blk_base;  // per sequence: index of its first query/key block (prefix sums)
  const int64_t* k_blk_base;
  int64_t total_q_blocks, total_k_blocks;
  float scale;
  int64_t window_left, window_right;  // < 0: unbounded. Query i sees key j when
                                      // i + off - left <= j <= i + off + right, off = k_len - q_len.
  // lse offset of (b, h, i) = b * lse_batch_stride + h * lse_head_stride + q_start[b] + i
  int64_t lse_batch_stride, lse_head_stride;

  int64_t group() const { return heads / kv_heads; }
  // Packed fp32 tiles: K/V blocks as (kBlockK x dp) rows or their (dp x kBlockK) transpose, query
  // blocks as (kBlockQ x dp); padded rows and columns are zero.
  int64_t k_tile(int64_t g, int64_t b, int64_t kb) const {
    return (g * total_k_blocks + k_blk_base[b] + kb) * kBlockK * dp;
  }
  int64_t q_row(int64_t h, int64_t b, int64_t qb) const { return (h * total_q_blocks + q_blk_base[b] + qb) * kBlockQ; }
  int64_t q_tile(int64_t h, int64_t b, int64_t qb) const { return q_row(h, b, qb) * dp; }
  int64_t k_tiles_floats() const { return kv_heads * total_k_blocks * kBlockK * dp; }
  int64_t q_tiles_floats() const { return heads * total_q_blocks * kBlockQ * dp; }
};

// Per-thread scratch, in floats.
int64_t workspace_floats(const Problem& p);

// Packs kv head g, key block kb of sequence b of src (k or v) into fp32 rows and/or their transpose
// (either pointer may be null) at offset p.k_tile(g, b, kb).
void pack_kv_block(const Problem& p, const View& src, int64_t b, int64_t g, int64_t kb, float* rows,
                   float* transposed);

// Forward of query blocks [qb_begin, qb_end) of sequence b for every q head of kv head g: writes
// their out rows and lse. The K/V blocks they see are first converted to fp32 rows in the workspace
// (once for the whole group; contiguous and cache-hot, unlike strided rows of a long K/V), or, with
// kv_in_place (can_read_kv_in_place), read from k / v themselves.
int64_t forward_workspace_floats(const Problem& p, int64_t max_k_blocks);
void forward_unit(const Problem& p, const View& q, const View& k, const View& v, const View& out, float* lse,
                  int64_t b, int64_t g, int64_t qb_begin, int64_t qb_end, bool kv_in_place, float* workspace);

// fp32 with head_dim a multiple of 16: the forward's GEMMs can read K/V rows from the tensor.
inline bool can_read_kv_in_place(const Problem& p, const View& kv) {
  return kv.dtype == DType::kFloat && p.head_dim == p.dp;
}

// Backward preparation of query block (b, h, qb): Q and dO as fp32 tiles at p.q_tile(h, b, qb);
// lse and delta = rowsum(dO * O) - grad_lse (grad_lse may be null) per row at p.q_row(h, b, qb).
void pack_q_block(const Problem& p, const View& q, const View& grad_out, const View& out, const float* lse,
                  const float* grad_lse, int64_t b, int64_t h, int64_t qb, float* q_tiles, float* do_tiles,
                  float* lse_rows, float* delta_rows);

// Backward of key blocks [kb_begin, kb_end) of sequence b, kv head g: writes their dK and dV rows,
// and adds dS K (without the scale) into dq_acc (laid out like the query tiles). dq_lo (same
// layout, zeros, or null) holds the partial dQ sums of the last kFold key blocks (accuracy).
void backward_blocks(const Problem& p, const float* q_tiles, const float* do_tiles, const float* lse_rows,
                     const float* delta_rows, const float* k_rows, const float* k_t, const float* v_t,
                     const View& dk, const View& dv, int64_t b, int64_t g, int64_t kb_begin, int64_t kb_end,
                     float* dq_acc, float* dq_lo, float* workspace);

// dQ of query block (b, h, qb) = scale * (sum of `parts` accumulators, part_stride floats apart).
void store_dq_block(const Problem& p, const float* dq_acc, int64_t parts, int64_t part_stride, const View& dq,
                    int64_t b, int64_t h, int64_t qb);

}  // namespace fastlm::cpu::attn
