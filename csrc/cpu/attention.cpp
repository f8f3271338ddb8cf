// Torch glue of the CPU FlashAttention kernels (attention_kernel.cpp): checks, packing, threads
// (the schemas are in fastlm/ops/schemas.py). Work items (query blocks forward; chunks of key blocks backward) are handed out to
// torch's threads dynamically, most expensive first (causal blocks differ a lot in cost); each
// item writes its own outputs, so the results do not depend on the schedule.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "cpu/attention_bf16_kernel.h"
#include "cpu/attention_kernel.h"

namespace fastlm::cpu {
namespace {

using attn::kBlockK;
using attn::kBlockQ;

constexpr const char* kFwd = "fastlm::attention_fwd";
constexpr const char* kBwd = "fastlm::attention_bwd";

// Sequence layout: dense batches (4-D) or packed documents (3-D with cu_seqlens).
struct Layout {
  bool varlen = false;
  int64_t batch = 0, sq = 0, sk = 0, heads = 0, kv_heads = 0, head_dim = 0;
  std::vector<int64_t> q_start, q_len, k_start, k_len, q_blk_base, k_blk_base;
  int64_t total_q_blocks = 0, total_k_blocks = 0;
};

Layout check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const std::optional<at::Tensor>& cu_seqlens) {
  Layout L;
  L.varlen = cu_seqlens.has_value();
  const int64_t rank = L.varlen ? 3 : 4;
  TORCH_CHECK(q.dim() == rank && k.dim() == rank && v.dim() == rank, op, ": q, k, v must be ", rank,
              "-D (", L.varlen ? "total, heads, head_dim with cu_seqlens" : "batch, seqlen, heads, head_dim",
              "), got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
              ": q must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(k.scalar_type() == dtype && v.scalar_type() == dtype, op, ": q, k, v must have the same dtype");
  TORCH_CHECK(k.sizes() == v.sizes(), op, ": k and v shapes differ: ", k.sizes(), " and ", v.sizes());
  L.head_dim = q.size(-1);
  TORCH_CHECK(k.size(-1) == L.head_dim, op, ": q and k head_dim differ");
  TORCH_CHECK(L.head_dim >= 8 && L.head_dim <= 256, op, ": head_dim must be between 8 and 256, got ", L.head_dim);
  L.heads = q.size(-2);
  L.kv_heads = k.size(-2);
  TORCH_CHECK(L.kv_heads > 0 && L.heads % L.kv_heads == 0, op, ": q heads (", L.heads,
              ") must be a multiple of k/v heads (", L.kv_heads, ")");
  if (!L.varlen) {
    TORCH_CHECK(q.size(0) == k.size(0), op, ": q and k batch sizes differ");
    L.batch = q.size(0);
    L.sq = q.size(1);
    L.sk = k.size(1);
    L.q_start.assign(L.batch, 0);
    L.k_start.assign(L.batch, 0);
    L.q_len.assign(L.batch, L.sq);
    L.k_len.assign(L.batch, L.sk);
  } else {
    const at::Tensor& cu_in = *cu_seqlens;
    TORCH_CHECK(cu_in.dim() == 1 && cu_in.size(0) >= 2, op, ": cu_seqlens must be 1-D with at least 2 entries");
    TORCH_CHECK(cu_in.scalar_type() == at::kInt || cu_in.scalar_type() == at::kLong, op,
                ": cu_seqlens must be int32 or int64");
    TORCH_CHECK(q.size(0) == k.size(0), op, ": with cu_seqlens q and k must have the same number of tokens");
    const at::Tensor cu = cu_in.to(at::kLong).contiguous();
    const int64_t* c = cu.data_ptr<int64_t>();
    L.batch = cu.size(0) - 1;
    TORCH_CHECK(c[0] == 0 && c[L.batch] == q.size(0), op, ": cu_seqlens must start at 0 and end at ", q.size(0));
    for (int64_t b = 0; b < L.batch; ++b) {
      TORCH_CHECK(c[b + 1] >= c[b], op, ": cu_seqlens must be increasing");
      L.q_start.push_back(c[b]);
      L.q_len.push_back(c[b + 1] - c[b]);
    }
    L.k_start = L.q_start;
    L.k_len = L.q_len;
  }
  for (int64_t b = 0; b < L.batch; ++b) {
    L.q_blk_base.push_back(L.total_q_blocks);
    L.k_blk_base.push_back(L.total_k_blocks);
    L.total_q_blocks += attn::ceil_div(L.q_len[b], kBlockQ);
    L.total_k_blocks += attn::ceil_div(L.k_len[b], kBlockK);
  }
  return L;
}

attn::Problem make_problem(const Layout& L, double scale, int64_t window_left, int64_t window_right) {
  attn::Problem p{};
  p.num_seqs = L.batch;
  p.heads = L.heads;
  p.kv_heads = L.kv_heads;
  p.head_dim = L.head_dim;
  p.dp = attn::round_up(L.head_dim, 16);
  p.q_start = L.q_start.data();
  p.q_len = L.q_len.data();
  p.k_start = L.k_start.data();
  p.k_len = L.k_len.data();
  p.q_blk_base = L.q_blk_base.data();
  p.k_blk_base = L.k_blk_base.data();
  p.total_q_blocks = L.total_q_blocks;
  p.total_k_blocks = L.total_k_blocks;
  p.scale = static_cast<float>(scale);
  p.window_left = window_left < 0 ? -1 : window_left;
  p.window_right = window_right < 0 ? -1 : window_right;
  if (L.varlen) {  // lse (H, total)
    p.lse_batch_stride = 0;
    p.lse_head_stride = L.q_len.empty() ? 0 : L.q_start.back() + L.q_len.back();
  } else {  // lse (B, H, Sq)
    p.lse_batch_stride = L.heads * L.sq;
    p.lse_head_stride = L.sq;
  }
  return p;
}

// The kernel that runs for inputs of this dtype: "bf16" (AVX512-BF16 products on bf16 tiles) for
// bf16 inputs on CPUs that have it, else "fp32" (fp32 products; bf16 inputs converted to fp32 tiles).
// FASTLM_ATTN_KERNEL=bf16|fp32 forces one (tests, benchmarks); fp32 inputs always run fp32.
std::string kernel_for(at::ScalarType dtype) {
  const char* env = std::getenv("FASTLM_ATTN_KERNEL");
  const std::string want = env != nullptr && *env != '\0' ? env : "auto";
  TORCH_CHECK(want == "auto" || want == "bf16" || want == "fp32",
              "fastlm attention: FASTLM_ATTN_KERNEL must be auto, bf16 or fp32, got ", want);
  if (dtype != at::kBFloat16 || want == "fp32") return "fp32";
  const bool has = attn::bf16::supported();
  TORCH_CHECK(has || want == "auto", "fastlm attention: FASTLM_ATTN_KERNEL=bf16 but this CPU lacks AVX512-BF16");
  return has ? "bf16" : "fp32";
}

std::string attention_cpu_kernel(at::ScalarType dtype) { return kernel_for(dtype); }

// A view of a tensor with unit stride along head_dim (copied to contiguous otherwise).
at::Tensor unit_last(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

attn::View view_of(const at::Tensor& t, bool varlen) {
  attn::View v{};
  v.data = const_cast<void*>(t.data_ptr());
  v.dtype = t.scalar_type() == at::kFloat ? attn::DType::kFloat : attn::DType::kBFloat16;
  if (varlen) {
    v.batch_stride = 0;
    v.pos_stride = t.stride(0);
    v.head_stride = t.stride(1);
  } else {
    v.batch_stride = t.stride(0);
    v.pos_stride = t.stride(1);
    v.head_stride = t.stride(2);
  }
  return v;
}

// fp16 runs through fp32 copies (no native fp16 path on CPUs); fp32/bf16 are read in place.
at::Tensor kernel_input(const at::Tensor& t) {
  return unit_last(t.scalar_type() == at::kHalf ? t.to(at::kFloat) : t);
}

// Runs fn(item, workspace) for items 0..n-1 on torch's threads, handing items out dynamically.
template <typename Fn>
void for_each_item(int64_t n, int64_t workspace_floats, const Fn& fn) {
  if (n <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> ws(workspace_floats);
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i, ws.data());
    }
  });
}

struct Block {
  int64_t b, h, blk;
};

// All (sequence, head, block) triples, heaviest first: under a causal mask later query blocks see
// more keys; with a window every block costs about the same.
std::vector<Block> query_blocks(const Layout& L) {
  std::vector<Block> items;
  for (int64_t b = 0; b < L.batch; ++b)
    for (int64_t h = 0; h < L.heads; ++h)
      for (int64_t qb = attn::ceil_div(L.q_len[b], kBlockQ) - 1; qb >= 0; --qb) items.push_back({b, h, qb});
  std::stable_sort(items.begin(), items.end(), [](const Block& x, const Block& y) { return x.blk > y.blk; });
  return items;
}

// Forward work: (sequence, kv head, run of query blocks). A unit converts the K/V blocks it needs to
// fp32 once for all q heads of the group (cache-hot: no big packed copy of K/V); the runs are cut
// only as far as needed to keep the threads busy. Heaviest first (causal: the later query blocks).
struct Unit {
  int64_t b, g, qb_begin, qb_end;
};

std::vector<Unit> forward_units(const Layout& L) {
  int64_t max_qb = 1;
  for (int64_t b = 0; b < L.batch; ++b) max_qb = std::max(max_qb, attn::ceil_div(L.q_len[b], kBlockQ));
  const int64_t groups = L.batch * L.kv_heads;
  const int64_t chunks = std::clamp<int64_t>(attn::ceil_div(2 * at::get_num_threads(), groups), 1, max_qb);
  std::vector<Unit> units;
  for (int64_t b = 0; b < L.batch; ++b) {
    const int64_t nqb = attn::ceil_div(L.q_len[b], kBlockQ);
    for (int64_t g = 0; g < L.kv_heads; ++g)
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t begin = nqb * c / chunks, end = nqb * (c + 1) / chunks;
        if (begin < end) units.push_back({b, g, begin, end});
      }
  }
  std::stable_sort(units.begin(), units.end(), [](const Unit& x, const Unit& y) { return x.qb_end > y.qb_end; });
  return units;
}

at::Tensor pack_kv(const attn::Problem& p, const Layout& L, const attn::View& src, bool rows, bool transposed,
                   at::Tensor* transposed_out) {
  std::vector<Block> items;
  for (int64_t b = 0; b < L.batch; ++b)
    for (int64_t g = 0; g < L.kv_heads; ++g)
      for (int64_t kb = 0; kb < attn::ceil_div(L.k_len[b], kBlockK); ++kb) items.push_back({b, g, kb});
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  at::Tensor r = rows ? at::empty({p.k_tiles_floats()}, opts) : at::Tensor();
  at::Tensor t = transposed ? at::empty({p.k_tiles_floats()}, opts) : at::Tensor();
  float* rp = rows ? r.data_ptr<float>() : nullptr;
  float* tp = transposed ? t.data_ptr<float>() : nullptr;
  for_each_item(static_cast<int64_t>(items.size()), 0, [&](int64_t i, float*) {
    attn::pack_kv_block(p, src, items[i].b, items[i].h, items[i].blk, rp, tp);
  });
  if (transposed_out != nullptr) *transposed_out = t;
  return r;
}

std::tuple<at::Tensor, at::Tensor> attention_fwd(const at::Tensor& q_in, const at::Tensor& k_in,
                                                 const at::Tensor& v_in, const std::optional<at::Tensor>& cu_seqlens,
                                                 int64_t max_seqlen, double softmax_scale, int64_t window_left,
                                                 int64_t window_right) {
  (void)max_seqlen;
  const Layout L = check_inputs(kFwd, q_in, k_in, v_in, cu_seqlens);
  const attn::Problem p = make_problem(L, softmax_scale, window_left, window_right);
  const at::Tensor q = kernel_input(q_in), k = kernel_input(k_in), v = kernel_input(v_in);
  at::Tensor out = at::empty(q.sizes(), q.options());  // contiguous, fp32 for fp16 inputs
  at::Tensor lse = L.varlen ? at::empty({L.heads, q.size(0)}, q.options().dtype(at::kFloat))
                            : at::empty({L.batch, L.heads, L.sq}, q.options().dtype(at::kFloat));
  if (q.numel() > 0) {
    const attn::View qv = view_of(q, L.varlen), kv = view_of(k, L.varlen), vv = view_of(v, L.varlen);
    const attn::View ov = view_of(out, L.varlen);
    // Decoding (one query block per sequence) reads fp32 K/V in place: each key block is used once
    // per q head, so converting it would cost more than it saves.
    const bool one_q_block = std::all_of(L.q_len.begin(), L.q_len.end(), [](int64_t n) { return n <= kBlockQ; });
    const bool in_place = one_q_block && attn::can_read_kv_in_place(p, kv);
    int64_t max_kb = 1;
    for (int64_t b = 0; b < L.batch; ++b) max_kb = std::max(max_kb, attn::ceil_div(L.k_len[b], kBlockK));
    const std::vector<Unit> units = forward_units(L);
    float* lp = lse.data_ptr<float>();
    if (kernel_for(q.scalar_type()) == "bf16") {
      for_each_item(static_cast<int64_t>(units.size()), attn::bf16::forward_workspace_floats(p, max_kb),
                    [&](int64_t i, float* ws) {
                      const Unit& u = units[i];
                      attn::bf16::forward_unit(p, qv, kv, vv, ov, lp, u.b, u.g, u.qb_begin, u.qb_end, ws);
                    });
      return {out, lse};
    }
    for_each_item(static_cast<int64_t>(units.size()), attn::forward_workspace_floats(p, in_place ? 0 : max_kb),
                  [&](int64_t i, float* ws) {
                    const Unit& u = units[i];
                    attn::forward_unit(p, qv, kv, vv, ov, lp, u.b, u.g, u.qb_begin, u.qb_end, in_place, ws);
                  });
  }
  return {q_in.scalar_type() == at::kHalf ? out.to(at::kHalf) : out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd(
    const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in, const std::optional<at::Tensor>& grad_lse_in,
    const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen, double softmax_scale, int64_t window_left,
    int64_t window_right) {
  (void)max_seqlen;
  const Layout L = check_inputs(kBwd, q_in, k_in, v_in, cu_seqlens);
  TORCH_CHECK(grad_in.sizes() == q_in.sizes() && out_in.sizes() == q_in.sizes(), kBwd,
              ": grad_out and out must have q's shape");
  const auto lse_shape = L.varlen ? std::vector<int64_t>{L.heads, q_in.size(0)}
                                  : std::vector<int64_t>{L.batch, L.heads, L.sq};
  TORCH_CHECK(lse_in.sizes() == at::IntArrayRef(lse_shape), kBwd, ": lse must have shape ", lse_shape, ", got ",
              lse_in.sizes());
  const attn::Problem p = make_problem(L, softmax_scale, window_left, window_right);
  const at::Tensor q = kernel_input(q_in), k = kernel_input(k_in), v = kernel_input(v_in);
  const at::Tensor g = kernel_input(grad_in.to(q_in.scalar_type()));
  const at::Tensor o = kernel_input(out_in.to(q_in.scalar_type()));
  const at::Tensor lse = lse_in.to(at::kFloat).contiguous();
  at::Tensor grad_lse;
  if (grad_lse_in.has_value() && grad_lse_in->defined()) {
    TORCH_CHECK(grad_lse_in->sizes() == lse_in.sizes(), kBwd, ": grad_lse must have lse's shape");
    grad_lse = grad_lse_in->to(at::kFloat).contiguous();
  }
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  if (q.numel() > 0 && k.numel() > 0) {
    const auto opts = at::TensorOptions().dtype(at::kFloat);
    const bool varlen = L.varlen;
    const bool bf16 = kernel_for(q.scalar_type()) == "bf16";
    const std::vector<Block> qblocks = query_blocks(L);
    at::Tensor lse_rows = at::empty({p.heads * p.total_q_blocks * kBlockQ}, opts);
    at::Tensor delta_rows = at::empty({p.heads * p.total_q_blocks * kBlockQ}, opts);
    float* lrp = lse_rows.data_ptr<float>();
    float* drp = delta_rows.data_ptr<float>();
    const attn::View qv = view_of(q, varlen), kv = view_of(k, varlen), vv = view_of(v, varlen);
    const attn::View gv = view_of(g, varlen), ov = view_of(o, varlen);
    const float* glp = grad_lse.defined() ? grad_lse.data_ptr<float>() : nullptr;
    // fp32 kernel: K, K^T, V^T, Q and dO as fp32 tiles. bf16 kernel: its bf16 tiles (attention_bf16_kernel.h).
    at::Tensor k_rows, k_t, v_t, q_tiles, do_tiles, q16;
    if (bf16) {
      q16 = at::empty({attn::bf16::q_tiles_elems(p)}, opts.dtype(at::kBFloat16));
      auto* qp = reinterpret_cast<uint16_t*>(q16.data_ptr());
      for_each_item(static_cast<int64_t>(qblocks.size()), 0, [&](int64_t i, float*) {
        attn::bf16::pack_q_block(p, qv, gv, ov, lse.data_ptr<float>(), glp, qblocks[i].b, qblocks[i].h,
                                 qblocks[i].blk, qp, lrp, drp);
      });
    } else {
      k_rows = pack_kv(p, L, kv, true, true, &k_t);
      pack_kv(p, L, vv, false, true, &v_t);
      q_tiles = at::empty({p.q_tiles_floats()}, opts);
      do_tiles = at::empty({p.q_tiles_floats()}, opts);
      for_each_item(static_cast<int64_t>(qblocks.size()), 0, [&](int64_t i, float*) {
        attn::pack_q_block(p, qv, gv, ov, lse.data_ptr<float>(), glp, qblocks[i].b, qblocks[i].h, qblocks[i].blk,
                           q_tiles.data_ptr<float>(), do_tiles.data_ptr<float>(), lrp, drp);
      });
    }
    // Chunks of key blocks per (sequence, kv head): enough tasks for the threads; each chunk adds
    // into its own dQ accumulator.
    const int64_t units = L.batch * L.kv_heads;
    int64_t max_kb = 1;
    for (int64_t b = 0; b < L.batch; ++b) max_kb = std::max(max_kb, attn::ceil_div(L.k_len[b], kBlockK));
    const int64_t chunks =
        std::max<int64_t>(1, std::min<int64_t>(max_kb, attn::ceil_div(2 * at::get_num_threads(), units)));
    const int64_t part = p.q_tiles_floats();
    at::Tensor dq_acc = at::zeros({chunks * part}, opts);
    // Partial sums for long key ranges (see attn::kFold); only a chunk of more than kFold key blocks uses it.
    at::Tensor dq_lo = at::zeros({max_kb / chunks > attn::kFold ? chunks * part : 0}, opts);
    std::vector<Block> tasks;
    for (int64_t c = 0; c < chunks; ++c)
      for (int64_t b = 0; b < L.batch; ++b)
        for (int64_t gh = 0; gh < L.kv_heads; ++gh) tasks.push_back({b, gh, c});
    const attn::View dkv = view_of(dk, varlen), dvv = view_of(dv, varlen);
    const int64_t ws_floats = bf16 ? attn::bf16::backward_workspace_floats(p) : attn::workspace_floats(p);
    for_each_item(static_cast<int64_t>(tasks.size()), ws_floats, [&](int64_t i, float* ws) {
      const Block& t = tasks[i];
      const int64_t nkb = attn::ceil_div(L.k_len[t.b], kBlockK);
      const int64_t kb0 = nkb * t.blk / chunks, kb1 = nkb * (t.blk + 1) / chunks;
      float* dqa = dq_acc.data_ptr<float>() + t.blk * part;
      float* dql = dq_lo.numel() ? dq_lo.data_ptr<float>() + t.blk * part : nullptr;
      if (bf16)
        attn::bf16::backward_blocks(p, reinterpret_cast<const uint16_t*>(q16.data_ptr()), lrp, drp, kv, vv, dkv,
                                    dvv, t.b, t.h, kb0, kb1, dqa, dql, ws);
      else
        attn::backward_blocks(p, q_tiles.data_ptr<float>(), do_tiles.data_ptr<float>(), lrp, drp,
                              k_rows.data_ptr<float>(), k_t.data_ptr<float>(), v_t.data_ptr<float>(), dkv, dvv, t.b,
                              t.h, kb0, kb1, dqa, dql, ws);
    });
    const attn::View dqv = view_of(dq, varlen);
    for_each_item(static_cast<int64_t>(qblocks.size()), 0, [&](int64_t i, float*) {
      const Block& qb = qblocks[i];
      if (bf16)
        attn::bf16::store_dq_block(p, dq_acc.data_ptr<float>(), chunks, part, dqv, qb.b, qb.h, qb.blk);
      else
        attn::store_dq_block(p, dq_acc.data_ptr<float>(), chunks, part, dqv, qb.b, qb.h, qb.blk);
    });
  } else {
    dq.zero_();
    dk.zero_();
    dv.zero_();
  }
  if (q_in.scalar_type() == at::kHalf) return {dq.to(at::kHalf), dk.to(at::kHalf), dv.to(at::kHalf)};
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastlm, m) {
  // Which CPU attention kernel runs for inputs of this dtype now: "bf16" or "fp32" (see kernel_for).
  m.def("attention_cpu_kernel(ScalarType dtype) -> str", &attention_cpu_kernel);
}

TORCH_LIBRARY_IMPL(fastlm, CPU, m) {
  m.impl("attention_fwd", &attention_fwd);
  m.impl("attention_bwd", &attention_bwd);
}

}  // namespace fastlm::cpu
