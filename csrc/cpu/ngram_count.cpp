// n-gram counting (sorted packed keys, blocked so memory follows the distinct n-grams), KenLM's
// adjusted counts, and interpolated smoothing written in backoff form. See ngram_kernel.h.
//
// Counts, as lmplz computes them (Chen & Goodman; Heafield et al. 2013):
//  - the highest order, and every n-gram that starts with <s>, keeps its raw count;
//  - any other lower-order n-gram gets its continuation count: the number of distinct words seen
//    to its left. Every occurrence of a non-<s> n-gram has a left neighbour, so the lower orders
//    come from the distinct (n+1)-grams by dropping their first word.
// Then for each context h (p_lower = the same formula one order down, uniform 1/U at the bottom):
//   p(w|h) = (c(hw) - D(c)) / den(h) + gamma(h) p_lower(w|h'),  gamma(h) = gnum(h) / den(h),
// which is exactly the backoff form: stored p for the seen n-grams, backoff(h) = gamma(h).
#include "cpu/ngram_kernel.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace fastlm::cpu::ngram {
namespace {

constexpr double kLogZero = -99.0 * 2.302585092994046;  // ARPA's -99 (log10) for p(<s>)

struct Counts {
  std::vector<Key> keys;
  std::vector<uint64_t> raw;       // occurrences
  std::vector<uint64_t> adjusted;  // KenLM's adjusted count
  std::vector<int64_t> suffix;     // index of (w2..wn) in the order below (orders >= 2)
};

// A suffix of an (n+1)-gram, its raw count and where it came from (to link the two orders).
struct SuffixRef {
  Key key;
  uint64_t count;
  int64_t origin;
};

struct KeyCount {
  Key key;
  uint64_t count;
};

Key all_ones() { return ~static_cast<Key>(0); }

// Sorts v in parallel: sorted chunks, then rounds of pairwise merges.
template <class T, class Less>
void parallel_sort(std::vector<T>& v, Less less, int64_t min_chunk, const ParallelFor& parallel_for) {
  const int64_t n = static_cast<int64_t>(v.size());
  int64_t chunks = 1;
  while (chunks < 64 && n / (chunks * 2) >= min_chunk) chunks *= 2;  // small inputs: one thread
  if (chunks == 1) {
    std::sort(v.begin(), v.end(), less);
    return;
  }
  auto bound = [&](int64_t c) { return n * c / chunks; };
  parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) std::sort(v.begin() + bound(c), v.begin() + bound(c + 1), less);
  });
  std::vector<T> tmp(v.size());
  for (int64_t width = 1; width < chunks; width *= 2) {
    parallel_for(0, chunks / (2 * width), 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t a = bound(2 * p * width), m = bound((2 * p + 1) * width), b = bound((2 * p + 2) * width);
        std::merge(v.begin() + a, v.begin() + m, v.begin() + m, v.begin() + b, tmp.begin() + a, less);
      }
    });
    v.swap(tmp);
  }
}

// The window stream[i..i+n) as a key, or all_ones() when it crosses into the next document.
Key window_key(const int64_t* stream, int64_t i, int n, int bits, int64_t bos) {
  Key key = static_cast<Key>(stream[i]);
  for (int j = 1; j < n; ++j) {
    if (stream[i + j] == bos) return all_ones();
    key = (key << bits) | static_cast<Key>(stream[i + j]);
  }
  return key;
}

// Sorted distinct keys of `keys` (sentinels all_ones() dropped) with their multiplicities.
std::vector<KeyCount> run_lengths(const std::vector<Key>& keys) {
  std::vector<KeyCount> out;
  for (size_t i = 0; i < keys.size();) {
    if (keys[i] == all_ones()) break;
    size_t j = i + 1;
    while (j < keys.size() && keys[j] == keys[i]) ++j;
    out.push_back({keys[i], static_cast<uint64_t>(j - i)});
    i = j;
  }
  return out;
}

// Merges two sorted (key, count) lists, adding the counts of equal keys.
std::vector<KeyCount> merge_counts(const std::vector<KeyCount>& a, const std::vector<KeyCount>& b) {
  std::vector<KeyCount> out;
  out.reserve(a.size() + b.size());
  size_t i = 0, j = 0;
  while (i < a.size() || j < b.size()) {
    if (j == b.size() || (i < a.size() && a[i].key < b[j].key)) {
      out.push_back(a[i++]);
    } else if (i == a.size() || b[j].key < a[i].key) {
      out.push_back(b[j++]);
    } else {
      out.push_back({a[i].key, a[i].count + b[j].count});
      ++i, ++j;
    }
  }
  return out;
}

// Raw counts of every order-n window, a block of positions at a time so that the memory is the
// distinct n-grams plus one block.
std::vector<KeyCount> count_windows(const int64_t* stream, int64_t length, int n, const EstimateOptions& options,
                                    const ParallelFor& parallel_for) {
  const int bits = options.bits;
  const int64_t bos = options.vocab_words + 1;
  const int64_t positions = length - n + 1;
  std::vector<KeyCount> total;
  int64_t block = options.block;
  for (int64_t b0 = 0; b0 < positions; b0 += block) {
    block = std::max<int64_t>(block, static_cast<int64_t>(total.size()));
    const int64_t b1 = std::min(positions, b0 + block);
    std::vector<Key> keys(b1 - b0);
    parallel_for(b0, b1, 1 << 16, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) keys[p - b0] = window_key(stream, p, n, bits, bos);
    });
    parallel_sort(keys, std::less<Key>(), options.sort_chunk, parallel_for);
    total = total.empty() ? run_lengths(keys) : merge_counts(total, run_lengths(keys));
  }
  return total;
}

// Order n < N from the distinct (n+1)-grams (their suffixes: continuation counts and raw counts)
// and the documents' first n-grams `<s> ...` (raw counts).
// Also sets higher.suffix: the index of each (n+1)-gram's suffix in the result.
Counts lower_order(Counts& higher, const int64_t* stream, int64_t length, int n, const EstimateOptions& options,
                   const ParallelFor& parallel_for) {
  const int bits = options.bits;
  const int64_t bos = options.vocab_words + 1;
  const Key mask = (static_cast<Key>(1) << (bits * n)) - 1;
  std::vector<SuffixRef> suffixes(higher.keys.size());
  parallel_for(0, static_cast<int64_t>(suffixes.size()), 1 << 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) suffixes[i] = {higher.keys[i] & mask, higher.raw[i], i};
  });
  parallel_sort(suffixes, [](const SuffixRef& a, const SuffixRef& b) { return a.key < b.key; }, options.sort_chunk,
                parallel_for);

  std::vector<Key> starts;  // <s>-initial windows: one per document long enough
  for (int64_t i = 0; i + n <= length; ++i) {
    if (stream[i] != bos) continue;
    const Key key = window_key(stream, i, n, bits, bos);
    if (key != all_ones()) starts.push_back(key);
  }
  std::sort(starts.begin(), starts.end());
  const std::vector<KeyCount> bos_counts = run_lengths(starts);

  Counts out;
  higher.suffix.assign(higher.keys.size(), -1);
  size_t j = 0;
  auto take_bos_before = [&](Key limit, bool all) {
    for (; j < bos_counts.size() && (all || bos_counts[j].key < limit); ++j) {
      out.keys.push_back(bos_counts[j].key);
      out.raw.push_back(bos_counts[j].count);
      out.adjusted.push_back(bos_counts[j].count);
    }
  };
  for (size_t i = 0; i < suffixes.size();) {
    take_bos_before(suffixes[i].key, false);
    const int64_t index = static_cast<int64_t>(out.keys.size());
    size_t e = i;
    uint64_t raw = 0;
    for (; e < suffixes.size() && suffixes[e].key == suffixes[i].key; ++e) {
      raw += suffixes[e].count;
      higher.suffix[suffixes[e].origin] = index;
    }
    out.keys.push_back(suffixes[i].key);
    out.raw.push_back(raw);
    out.adjusted.push_back(static_cast<uint64_t>(e - i));
    i = e;
  }
  take_bos_before(0, true);
  return out;
}

// Unigram entries for words never seen (count 0): <unk>, and all of 0..V-1 when asked; <s> gets
// count 0 (it is never predicted; KenLM writes p(<s>) = -99).
// Returns where each old entry went (the bigrams' suffix indices are remapped with it).
std::vector<int64_t> complete_unigrams(Counts& unigrams, const EstimateOptions& options) {
  const int64_t V = options.vocab_words, bos = V + 1, unk = V + 2;
  std::vector<Key> missing;
  size_t i = 0;
  auto add_if_missing = [&](int64_t w) {
    while (i < unigrams.keys.size() && unigrams.keys[i] < static_cast<Key>(w)) ++i;
    if (i == unigrams.keys.size() || unigrams.keys[i] != static_cast<Key>(w)) missing.push_back(static_cast<Key>(w));
  };
  if (options.all_vocab)
    for (int64_t w = 0; w < V; ++w) add_if_missing(w);
  add_if_missing(V);  // </s> (always seen; kept for safety)
  add_if_missing(bos);
  add_if_missing(unk);
  Counts merged;
  std::vector<int64_t> moved(unigrams.keys.size());
  size_t a = 0, b = 0;
  while (a < unigrams.keys.size() || b < missing.size()) {
    if (b == missing.size() || (a < unigrams.keys.size() && unigrams.keys[a] < missing[b])) {
      moved[a] = static_cast<int64_t>(merged.keys.size());
      merged.keys.push_back(unigrams.keys[a]);
      merged.raw.push_back(unigrams.raw[a]);
      merged.adjusted.push_back(unigrams.adjusted[a]);
      ++a;
    } else {
      merged.keys.push_back(missing[b++]);
      merged.raw.push_back(0);
      merged.adjusted.push_back(0);
    }
  }
  const int64_t bos_index = find(merged.keys.data(), static_cast<int64_t>(merged.keys.size()), static_cast<Key>(bos));
  merged.raw[bos_index] = merged.adjusted[bos_index] = 0;
  unigrams = std::move(merged);
  return moved;
}

bool uses_adjusted(Smoothing s) { return s == Smoothing::ModifiedKneserNey || s == Smoothing::KneserNey; }

// D1, D2, D3+ from the counts of counts t1..t4 (Chen & Goodman's estimates, KenLM's checks; its
// --discount_fallback values 0.5, 1, 1.5 when they fail).
void estimate_discounts(Smoothing smoothing, const int64_t* t, double* d) {
  if (smoothing == Smoothing::WittenBell || smoothing == Smoothing::AddK) {
    d[0] = d[1] = d[2] = 0.0;
    return;
  }
  const double fallback[3] = {0.5, 1.0, 1.5};
  // KenLM needs t1, t2, t3 (t4 = 0 just gives D3+ = 3).
  if (t[0] == 0 || (smoothing == Smoothing::ModifiedKneserNey && (t[1] == 0 || t[2] == 0))) {
    std::copy(fallback, fallback + 3, d);
    if (smoothing == Smoothing::KneserNey) d[1] = d[2] = d[0];
    return;
  }
  const double y = static_cast<double>(t[0]) / (t[0] + 2.0 * t[1]);
  if (smoothing == Smoothing::KneserNey) {
    d[0] = d[1] = d[2] = y;
    return;
  }
  for (int k = 1; k <= 3; ++k) {
    d[k - 1] = k - (k + 1) * y * static_cast<double>(t[k]) / static_cast<double>(t[k - 1]);
    if (d[k - 1] < 0.0 || d[k - 1] > k) {
      std::copy(fallback, fallback + 3, d);
      return;
    }
  }
}

double discount_of(const double* d, uint64_t count) { return count == 0 ? 0.0 : d[std::min<uint64_t>(count, 3) - 1]; }

// Probabilities of order n (index n-1 of tables) and the backoffs of their contexts (written into
// order n-1). `lower` is the finished order n-1 (nullptr for unigrams: the uniform 1/U).
void interpolate_order(const Counts& counts, const std::vector<bool>& pruned, int n, int bits,
                       const EstimateOptions& options, const double* d, double uniform_size,
                       OrderTable& table, OrderTable* lower, const ParallelFor& parallel_for) {
  const int64_t m = static_cast<int64_t>(counts.keys.size());
  const std::vector<uint64_t>& c = uses_adjusted(options.smoothing) ? counts.adjusted : counts.raw;
  const Key bos_key = static_cast<Key>(options.vocab_words + 1);
  table.keys = counts.keys;
  table.log_prob.assign(m, 0.0);
  table.log_backoff.assign(m, 0.0);
  auto context = [&](int64_t i) { return counts.keys[i] >> bits; };
  auto same_context = [&](int64_t a, int64_t b) { return n == 1 || context(a) == context(b); };

  parallel_for(0, m, 1 << 14, [&](int64_t b, int64_t e) {
    int64_t g = b;
    while (g > 0 && g < m && same_context(g, g - 1)) ++g;  // groups starting in [b, e) are ours
    // The contexts increase with g: find the first in the order below, then walk forward.
    int64_t h = (n > 1 && g < m) ? std::lower_bound(lower->keys.begin(), lower->keys.end(), context(g)) -
                                       lower->keys.begin()
                                 : 0;
    while (g < e && g < m) {
      int64_t end = g + 1;
      while (end < m && same_context(end, g)) ++end;
      double den = 0.0, gnum = 0.0, types = 0.0;
      for (int64_t i = g; i < end; ++i) {
        den += static_cast<double>(c[i]);
        types += c[i] > 0 ? 1.0 : 0.0;
        gnum += pruned[i] ? static_cast<double>(c[i]) : discount_of(d, c[i]);
      }
      if (options.smoothing == Smoothing::WittenBell) {
        den += types, gnum += types;
      } else if (options.smoothing == Smoothing::AddK) {
        den += options.add_k * uniform_size, gnum += options.add_k * uniform_size;
      }
      const double gamma = den > 0.0 ? gnum / den : 1.0;
      for (int64_t i = g; i < end; ++i) {
        if (n == 1 && counts.keys[i] == bos_key) {
          table.log_prob[i] = kLogZero;
          continue;
        }
        if (n > 1 && i + 16 < m) __builtin_prefetch(&lower->log_prob[counts.suffix[i + 16]]);  // a random read
        const double p_lower = n == 1 ? 1.0 / uniform_size : std::exp(lower->log_prob[counts.suffix[i]]);
        const double own = den > 0.0 ? (static_cast<double>(c[i]) - discount_of(d, c[i])) / den : 0.0;
        const double p = own + gamma * p_lower;
        table.log_prob[i] = p > 0.0 ? std::log(p) : kLogZero;
      }
      if (n > 1) {
        const int64_t size = static_cast<int64_t>(lower->keys.size());
        while (h < size && lower->keys[h] < context(g)) ++h;
        if (h < size && lower->keys[h] == context(g)) lower->log_backoff[h] = gamma > 0.0 ? std::log(gamma) : kLogZero;
      }
      g = end;
    }
  });
}

void drop_pruned(OrderTable& table, const std::vector<bool>& pruned) {
  size_t out = 0;
  for (size_t i = 0; i < table.keys.size(); ++i) {
    if (pruned[i]) continue;
    table.keys[out] = table.keys[i];
    table.log_prob[out] = table.log_prob[i];
    table.log_backoff[out] = table.log_backoff[i];
    ++out;
  }
  table.keys.resize(out);
  table.log_prob.resize(out);
  table.log_backoff.resize(out);
}

}  // namespace

int64_t find(const Key* keys, int64_t size, Key key) {
  const Key* it = std::lower_bound(keys, keys + size, key);
  return (it != keys + size && *it == key) ? it - keys : -1;
}

EstimateResult estimate(const int64_t* stream, int64_t length, const EstimateOptions& options,
                        const ParallelFor& parallel_for) {
  const int N = options.order;
  const int64_t bos = options.vocab_words + 1;
  if (N < 1 || N * options.bits > 128) throw std::invalid_argument("order * bits must be in 1..128");
  if (length < 2 || stream[0] != bos) throw std::invalid_argument("the stream must start with <s>");

  std::vector<Counts> counts(N);
  {
    std::vector<KeyCount> top = count_windows(stream, length, N, options, parallel_for);
    for (const KeyCount& kc : top) {
      counts[N - 1].keys.push_back(kc.key);
      counts[N - 1].raw.push_back(kc.count);
      counts[N - 1].adjusted.push_back(kc.count);
    }
  }
  for (int n = N - 1; n >= 1; --n) counts[n - 1] = lower_order(counts[n], stream, length, n, options, parallel_for);
  const std::vector<int64_t> moved = complete_unigrams(counts[0], options);
  if (N >= 2)
    for (int64_t& index : counts[1].suffix) index = moved[index];

  EstimateResult result;
  result.discounts.assign(3 * N, 0.0);
  result.counts_of_counts.assign(4 * N, 0);
  std::vector<std::vector<bool>> pruned(N);
  for (int n = 1; n <= N; ++n) {
    const Counts& cn = counts[n - 1];
    const std::vector<uint64_t>& c = uses_adjusted(options.smoothing) ? cn.adjusted : cn.raw;
    int64_t* t = &result.counts_of_counts[4 * (n - 1)];
    for (uint64_t x : c)
      if (x >= 1 && x <= 4) ++t[x - 1];
    double* d = &result.discounts[3 * (n - 1)];
    if (!options.discounts.empty()) {
      std::copy(options.discounts.begin() + 3 * (n - 1), options.discounts.begin() + 3 * n, d);
    } else {
      estimate_discounts(options.smoothing, t, d);
    }
    const int64_t threshold = n >= 2 && static_cast<int>(options.prune.size()) >= n ? options.prune[n - 1] : 0;
    pruned[n - 1].assign(cn.keys.size(), false);
    if (threshold > 0)
      for (size_t i = 0; i < cn.keys.size(); ++i) pruned[n - 1][i] = cn.raw[i] <= static_cast<uint64_t>(threshold);
  }

  const double uniform_size = static_cast<double>(counts[0].keys.size()) - 1.0;  // every unigram but <s>
  result.tables.resize(N);
  for (int n = 1; n <= N; ++n) {
    interpolate_order(counts[n - 1], pruned[n - 1], n, options.bits, options, &result.discounts[3 * (n - 1)],
                      uniform_size, result.tables[n - 1], n > 1 ? &result.tables[n - 2] : nullptr, parallel_for);
    counts[n - 1] = Counts();  // free as we go
  }
  for (int n = 2; n <= N; ++n) drop_pruned(result.tables[n - 1], pruned[n - 1]);
  return result;
}

}  // namespace fastlm::cpu::ngram
