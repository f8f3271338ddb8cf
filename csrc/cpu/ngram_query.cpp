// Backoff lookup in a model in ARPA form (see ngram_kernel.h), as KenLM queries it:
//   log p(w | h) = log p(longest stored suffix of h w) + the backoffs of the stored contexts of h
//   longer than that match's context.
// The stored contexts are found right to left and stop at the first one missing (KenLM's state).
#include "cpu/ngram_kernel.h"

#include <algorithm>

namespace fastlm::cpu::ngram {
namespace {

// A multiplicative mix of both halves (keys are small packed ids: their low bits alone hash badly).
inline uint64_t hash_key(Key key) {
  const uint64_t lo = static_cast<uint64_t>(key), hi = static_cast<uint64_t>(key >> 64);
  uint64_t h = lo * 0x9E3779B97F4A7C15ull ^ (hi + 0x632BE59BD9B4E019ull) * 0xC2B2AE3D27D4EB4Full;
  return h ^ (h >> 29);
}

}  // namespace

int64_t hash_slot_count(int64_t size) {
  int64_t n = 16;
  while (n < 2 * size) n *= 2;
  return n;
}

void hash_slots(const Key* keys, int64_t size, int64_t* slots, int64_t num_slots) {
  const uint64_t mask = static_cast<uint64_t>(num_slots - 1);
  std::fill(slots, slots + num_slots, int64_t{-1});
  for (int64_t i = 0; i < size; ++i) {
    uint64_t s = hash_key(keys[i]) & mask;
    while (slots[s] >= 0) s = (s + 1) & mask;
    slots[s] = i;
  }
}

int64_t lookup(const TableView& table, Key key) {
  const uint64_t mask = static_cast<uint64_t>(table.num_slots - 1);
  for (uint64_t s = hash_key(key) & mask;; s = (s + 1) & mask) {
    const int64_t i = table.slots[s];
    if (i < 0) return -1;
    if (table.keys[i] == key) return i;
  }
}

void query(const std::vector<TableView>& tables, int bits, double unk_log_prob, const int64_t* tokens, int64_t rows,
           int64_t row_stride, const int64_t* lengths, int64_t start, double* out, int64_t out_stride,
           const ParallelFor& parallel_for) {
  const int N = static_cast<int>(tables.size());
  // One task per (row, position): a single long row is spread over the threads too.
  parallel_for(0, rows * row_stride, 1 << 10, [&](int64_t i0, int64_t i1) {
    std::vector<double> backoff(N > 1 ? N - 1 : 1);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t r = i / row_stride, t = i % row_stride;
      if (t < start || t >= lengths[r]) continue;
      const int64_t* row = tokens + r * row_stride;
      {
        double* result = out + r * out_stride + (t - start);
        const Key word = static_cast<Key>(row[t]);
        const int64_t unigram = lookup(tables[0], word);
        if (unigram < 0) {
          *result = unk_log_prob;
          continue;
        }
        // Stored contexts h[t-j..t) for j = 1..context_length.
        const int64_t max_context = std::min<int64_t>(N - 1, t);
        int context_length = 0;
        Key context = 0;
        for (int j = 1; j <= max_context; ++j) {
          context |= static_cast<Key>(row[t - j]) << (bits * (j - 1));
          const TableView& table = tables[j - 1];
          const int64_t at = lookup(table, context);
          if (at < 0) break;
          backoff[j - 1] = table.log_backoff[at];
          context_length = j;
        }
        // Longest stored n-gram ending in the word, within the stored contexts.
        double log_prob = tables[0].log_prob[unigram];
        int match = 0;
        Key gram = word;
        for (int j = 1; j <= context_length; ++j) {
          gram |= static_cast<Key>(row[t - j]) << (bits * j);
          const TableView& table = tables[j];
          const int64_t at = lookup(table, gram);
          if (at < 0) break;
          log_prob = table.log_prob[at];
          match = j;
        }
        for (int j = match + 1; j <= context_length; ++j) log_prob += backoff[j - 1];
        *result = log_prob;
      }
    }
  });
}

}  // namespace fastlm::cpu::ngram
