// n-gram language models: counting, smoothing and backoff lookup over packed n-gram keys.
// Torch-free: pointers, sizes and std::vector; the threads come from the caller (a ParallelFor,
// at::parallel_for in the torch glue csrc/cpu/ngram.cpp).
//
// Word ids are the model's internal ids: 0..V-1 the vocabulary, V = </s>, V+1 = <s>, V+2 = <unk>.
// An n-gram w1..wn is one unsigned 128-bit key, w1 in the highest bits, `bits` bits per word, so
// that sorting keys sorts n-grams lexicographically: the n-grams sharing a context (w1..wn-1) are
// neighbours, and the context of a key is key >> bits, its suffix (w2..wn) key & mask.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace fastlm::cpu::ngram {

using Key = unsigned __int128;
// parallel_for(begin, end, grain, body(b, e)), like at::parallel_for.
using ParallelFor = std::function<void(int64_t, int64_t, int64_t, const std::function<void(int64_t, int64_t)>&)>;

enum class Smoothing : int { ModifiedKneserNey = 0, KneserNey = 1, WittenBell = 2, AddK = 3 };

// One order of a model in backoff (ARPA) form: sorted keys, natural-log probability and backoff.
struct OrderTable {
  std::vector<Key> keys;
  std::vector<double> log_prob;
  std::vector<double> log_backoff;
};

struct EstimateOptions {
  int order = 5;
  Smoothing smoothing = Smoothing::ModifiedKneserNey;
  int bits = 16;
  int64_t vocab_words = 0;       // V
  bool all_vocab = false;        // ids 0..V-1 all get unigram entries (else only the seen ones)
  double add_k = 1.0;
  // Per order (index n-1): 3 discounts (D1, D2, D3+) each; empty = estimate from counts of counts.
  std::vector<double> discounts;
  std::vector<int64_t> prune;    // per order (index n-1): drop n-grams with raw count <= prune[n-1]
  int64_t block = int64_t{1} << 22;       // positions counted per block (memory: distinct n-grams + a block)
  int64_t sort_chunk = int64_t{1} << 17;  // smallest chunk a sort gives a thread (small inputs: one thread)
};

struct EstimateResult {
  std::vector<OrderTable> tables;     // index n-1
  std::vector<double> discounts;      // 3 per order, as used
  std::vector<int64_t> counts_of_counts;  // 4 per order: t1..t4 of the counts smoothing used
};

// `stream`: documents as `<s> w1 .. wk </s>`, concatenated (every document starts with <s>).
EstimateResult estimate(const int64_t* stream, int64_t length, const EstimateOptions& options,
                        const ParallelFor& parallel_for);

// A read-only view of one order (the torch glue points it at tensors). `slots` is its hash index
// (hash_slots): open addressing, linear probing, num_slots a power of two, -1 = empty.
struct TableView {
  const Key* keys;
  int64_t size;
  const double* log_prob;
  const double* log_backoff;
  const int64_t* slots;
  int64_t num_slots;
};

// The hash index of sorted keys: num_slots (a power of two >= 2 size) entries, written to slots.
int64_t hash_slot_count(int64_t size);
void hash_slots(const Key* keys, int64_t size, int64_t* slots, int64_t num_slots);
// Index of key in the table (through its hash index), or -1.
int64_t lookup(const TableView& table, Key key);

// log p(token | history) for rows of internal ids (ids the model does not know already mapped to
// <unk>); tables[n-1] holds order n. For each row r and position start <= t < lengths[r] writes
// out[r * out_stride + t - start]; history = the row's tokens before t (at most order-1 of them).
// Rows are row_stride ids apart (row_stride >= every length). A token without a unigram entry
// scores unk_log_prob (a model without <unk>), and the history is searched as KenLM does (the
// longest stored suffix).
void query(const std::vector<TableView>& tables, int bits, double unk_log_prob,
           const int64_t* tokens, int64_t rows, int64_t row_stride, const int64_t* lengths, int64_t start,
           double* out, int64_t out_stride, const ParallelFor& parallel_for);

// Index of key in sorted keys[0..size), or -1.
int64_t find(const Key* keys, int64_t size, Key key);

}  // namespace fastlm::cpu::ngram
