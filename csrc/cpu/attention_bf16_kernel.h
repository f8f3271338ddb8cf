// FlashAttention-2 on bf16 inputs with AVX512-BF16 products (torch-free; glue in attention.cpp).
//
// Same blocking, masks, online softmax and kFold sums as the fp32 kernels (attention_kernel.h), but
// the matrix products run on bf16 tiles with vdpbf16ps (two products per fp32 lane, fp32 sums): Q,
// K, V and dO stay bf16 (no fp32 copies), P and dS are rounded to bf16 before their products (as
// FlashAttention does on GPUs); scores, softmax statistics, delta and every sum stay fp32.
//
// vdpbf16ps multiplies pairs: its B operand holds, per fp32 lane n, the bf16 pair (B[2k, n],
// B[2k + 1, n]) in one 32-bit word ("pair rows": uint32 [K/2][N]); the A operand's pair (A[i, 2k],
// A[i, 2k + 1]) is broadcast, so A is plain bf16 rows. Each product below picks the orientation
// whose operands are cheapest to build: a bf16 row pair is one 32-bit load, so Q^T / K^T as pair
// rows are a 32-bit transpose, and P / dS pair rows interleave two fp32 score rows while rounding.
// Outputs that sum over keys (O) or queries (dK, dV) are kept transposed (head_dim x 64 lanes).
#pragma once
#include <cstdint>

#include "cpu/attention_kernel.h"

namespace fastlm::cpu::attn::bf16 {

// The CPU has AVX-512 F/BW/VL and AVX512-BF16.
bool supported();

// Forward of query blocks [qb_begin, qb_end) of sequence b for every q head of kv head g (bf16 q,
// k, v, out): as attn::forward_unit, with the key blocks copied once per unit as bf16 K rows and V^T.
int64_t forward_workspace_floats(const Problem& p, int64_t max_k_blocks);
void forward_unit(const Problem& p, const View& q, const View& k, const View& v, const View& out, float* lse,
                  int64_t b, int64_t g, int64_t qb_begin, int64_t qb_end, float* workspace);

// Backward tiles, bf16 (uint16). Per query block (h, b, qb), at 4 * p.q_tile(h, b, qb): Q rows, Q^T,
// dO rows, dO^T (kBlockQ x dp each); q_tiles_elems in all. (The key blocks' tiles are built by
// backward_blocks itself, one block at a time, in its workspace.)
inline int64_t q_tiles_elems(const Problem& p) { return 4 * p.q_tiles_floats(); }

// As attn::pack_q_block: the query block's bf16 tiles, its lse rows and delta = rowsum(dO * O) - grad_lse.
void pack_q_block(const Problem& p, const View& q, const View& grad_out, const View& out, const float* lse,
                  const float* grad_lse, int64_t b, int64_t h, int64_t qb, uint16_t* q_tiles, float* lse_rows,
                  float* delta_rows);

// As attn::backward_blocks: dK, dV of key blocks [kb_begin, kb_end) of (b, g), dS K added into dq_acc
// (fp32, laid out like attn's query tiles, so attn::store_dq_block finishes dQ).
int64_t backward_workspace_floats(const Problem& p);
void backward_blocks(const Problem& p, const uint16_t* q_tiles, const float* lse_rows, const float* delta_rows,
                     const View& k, const View& v, const View& dk, const View& dv, int64_t b, int64_t g, int64_t kb_begin,
                     int64_t kb_end, float* dq_acc, float* dq_lo, float* workspace);

// As attn::store_dq_block, into a bf16 dq.
void store_dq_block(const Problem& p, const float* dq_acc, int64_t parts, int64_t part_stride, const View& dq,
                    int64_t b, int64_t h, int64_t qb);

}  // namespace fastlm::cpu::attn::bf16
