// word2vec training loops (see word2vec_kernel.h). Threads own contiguous ranges of sentences and
// write the shared syn0/syn1neg without locks, as word2vec.c and gensim do: collisions are rare in
// a large vocabulary and only perturb an update slightly.
#include "cpu/word2vec_kernel.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>
#include <vector>

#include "cpu/vectorize.h"

namespace fastlm::cpu::w2v {
namespace {

constexpr int kExpTableSize = 1000;
constexpr float kMaxExp = 6.f;          // sigmoid(+-6) is within 0.25% of 0 or 1: saturated
constexpr int64_t kAlphaEvery = 10000;  // words between learning-rate updates of a thread

// splitmix64: a fast per-thread generator whose low bits are as good as its high bits (the
// window reduction and the alias draw use modulo).
struct Rng {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform() { return static_cast<float>(next() >> 40) * (1.f / 16777216.f); }  // [0, 1)
};

// Walker's alias table for P(w) proportional to count(w)^0.75.
struct NoiseTable {
  std::vector<float> keep;
  std::vector<int32_t> alias;
  int64_t size = 0;

  NoiseTable(const int64_t* counts, int64_t vocab) : keep(vocab), alias(vocab), size(vocab) {
    std::vector<double> p(vocab);
    double total = 0;
    for (int64_t i = 0; i < vocab; ++i) total += p[i] = std::pow(static_cast<double>(counts[i]), 0.75);
    std::vector<int32_t> small, large;
    for (int64_t i = 0; i < vocab; ++i) {
      p[i] = total > 0 ? p[i] * vocab / total : 1.0;
      (p[i] < 1.0 ? small : large).push_back(static_cast<int32_t>(i));
    }
    for (int64_t i = 0; i < vocab; ++i) alias[i] = static_cast<int32_t>(i);
    while (!small.empty() && !large.empty()) {
      const int32_t s = small.back(), l = large.back();
      small.pop_back();
      keep[s] = static_cast<float>(p[s]);
      alias[s] = l;
      p[l] -= 1.0 - p[s];
      if (p[l] < 1.0) {
        large.pop_back();
        small.push_back(l);
      }
    }
    for (int32_t i : small) keep[i] = 1.f;  // leftovers are 1 up to rounding
    for (int32_t i : large) keep[i] = 1.f;
  }

  int32_t draw(Rng& rng) const {
    const uint64_t r = rng.next();
    const int64_t i = static_cast<int64_t>((r >> 32) % static_cast<uint64_t>(size));
    const float u = static_cast<float>(r & 0xFFFFFF) * (1.f / 16777216.f);
    return u < keep[i] ? static_cast<int32_t>(i) : alias[i];
  }
};

struct Shared {
  const Word2VecArgs& a;
  NoiseTable noise;
  std::vector<uint32_t> keep_below;  // subsampling: keep a word when a 32-bit draw is below this
  float exp_table[kExpTableSize];
  std::atomic<int64_t> words_done{0};  // raw words seen by all threads (drives the decay)
  std::atomic<int64_t> words_trained{0};

  explicit Shared(const Word2VecArgs& args) : a(args), noise(args.counts, args.vocab), keep_below(args.vocab) {
    double total = 0;
    for (int64_t i = 0; i < a.vocab; ++i) total += static_cast<double>(a.counts[i]);
    for (int64_t i = 0; i < a.vocab; ++i) {
      double keep = 1.0;
      const double c = static_cast<double>(a.counts[i]);
      if (a.sample > 0 && c > 0) {
        const double threshold = a.sample * total;  // word2vec.c's formula
        keep = (std::sqrt(c / threshold) + 1.0) * threshold / c;
      }
      keep_below[i] = keep >= 1.0 ? UINT32_MAX : static_cast<uint32_t>(keep * 4294967296.0);
    }
    for (int i = 0; i < kExpTableSize; ++i) {
      const float e = std::exp((static_cast<float>(i) / kExpTableSize * 2.f - 1.f) * kMaxExp);
      exp_table[i] = e / (e + 1.f);
    }
  }

  float alpha_now() const {
    const double total = static_cast<double>(a.epochs) * static_cast<double>(a.n_tokens);
    const double progress = total > 0 ? std::min(1.0, words_done.load(std::memory_order_relaxed) / total) : 1.0;
    return static_cast<float>(a.alpha - (a.alpha - a.min_alpha) * progress);
  }

  // (label - sigmoid(f)) * alpha, with word2vec.c's saturation outside [-6, 6].
  float gradient(float f, float label, float alpha) const {
    if (f >= kMaxExp) return (label - 1.f) * alpha;
    if (f <= -kMaxExp) return label * alpha;
    const int idx = static_cast<int>((f + kMaxExp) * (kExpTableSize / kMaxExp / 2.f));
    return (label - exp_table[std::min(idx, kExpTableSize - 1)]) * alpha;
  }
};

inline float dot(const float* x, const float* y, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) s += x[k] * y[k];
  return s;
}

inline void axpy(float g, const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) y[k] += g * x[k];
}

// Negative sampling for one (hidden l1, target word) pair: updates syn1neg, accumulates the
// gradient of l1 into neu1e.
inline void negative_sampling(Shared& s, const float* l1, int32_t word, float alpha, float* neu1e, Rng& rng) {
  const Word2VecArgs& a = s.a;
  const int64_t d = a.dim;
  for (int64_t n = 0; n <= a.negative; ++n) {
    int32_t target = word;
    float label = 1.f;
    if (n > 0) {
      target = s.noise.draw(rng);
      if (target == word) continue;
      label = 0.f;
    }
    float* l2 = a.syn1neg + static_cast<int64_t>(target) * d;
    const float g = s.gradient(dot(l1, l2, d), label, alpha);
    axpy(g, l2, neu1e, d);
    axpy(g, l1, l2, d);
  }
}

FASTLM_MULTIVERSION
void train_sentence(Shared& s, const int32_t* sen, int64_t n, float alpha, Rng& rng, float* neu1, float* neu1e) {
  const Word2VecArgs& a = s.a;
  const int64_t d = a.dim;
  for (int64_t pos = 0; pos < n; ++pos) {
    const int64_t b = static_cast<int64_t>(rng.next() % static_cast<uint64_t>(a.window));
    const int64_t lo = std::max<int64_t>(0, pos - a.window + b), hi = std::min<int64_t>(n, pos + a.window - b + 1);
    const int32_t word = sen[pos];
    if (a.cbow) {
      std::fill(neu1, neu1 + d, 0.f);
      std::fill(neu1e, neu1e + d, 0.f);
      int64_t cw = 0;
      for (int64_t c = lo; c < hi; ++c) {
        if (c == pos) continue;
        axpy(1.f, a.syn0 + static_cast<int64_t>(sen[c]) * d, neu1, d);
        ++cw;
      }
      if (cw == 0) continue;
      const float inv = 1.f / static_cast<float>(cw);  // cbow_mean: the average of the context
      for (int64_t k = 0; k < d; ++k) neu1[k] *= inv;
      negative_sampling(s, neu1, word, alpha, neu1e, rng);
      for (int64_t c = lo; c < hi; ++c) {
        if (c != pos) axpy(1.f, neu1e, a.syn0 + static_cast<int64_t>(sen[c]) * d, d);
      }
    } else {
      for (int64_t c = lo; c < hi; ++c) {
        if (c == pos) continue;
        float* l1 = a.syn0 + static_cast<int64_t>(sen[c]) * d;  // predict the centre word from each context word
        std::fill(neu1e, neu1e + d, 0.f);
        negative_sampling(s, l1, word, alpha, neu1e, rng);
        axpy(1.f, neu1e, l1, d);
      }
    }
  }
}

void worker(Shared& s, int64_t first_sentence, int64_t last_sentence, int64_t thread_id) {
  const Word2VecArgs& a = s.a;
  Rng rng{a.seed * 0x2545F4914F6CDD1Dull + static_cast<uint64_t>(thread_id) + 1};
  std::vector<float> neu1(a.dim), neu1e(a.dim);
  std::vector<int32_t> kept;
  int64_t pending = 0, trained = 0;
  float alpha = s.alpha_now();
  for (int64_t epoch = 0; epoch < a.epochs; ++epoch) {
    for (int64_t si = first_sentence; si < last_sentence; ++si) {
      const int64_t begin = a.sentence_starts[si], end = a.sentence_starts[si + 1];
      kept.clear();
      for (int64_t t = begin; t < end; ++t) {
        const int32_t w = a.tokens[t];
        if (s.keep_below[w] == UINT32_MAX || static_cast<uint32_t>(rng.next() >> 32) < s.keep_below[w]) kept.push_back(w);
      }
      train_sentence(s, kept.data(), static_cast<int64_t>(kept.size()), alpha, rng, neu1.data(), neu1e.data());
      trained += static_cast<int64_t>(kept.size());
      pending += end - begin;
      if (pending >= kAlphaEvery) {
        s.words_done.fetch_add(pending, std::memory_order_relaxed);
        pending = 0;
        alpha = s.alpha_now();
      }
    }
  }
  s.words_done.fetch_add(pending, std::memory_order_relaxed);
  s.words_trained.fetch_add(trained, std::memory_order_relaxed);
}

}  // namespace

int64_t train_word2vec(const Word2VecArgs& args) {
  if (args.n_tokens == 0 || args.vocab == 0 || args.epochs <= 0) return 0;
  Shared shared(args);
  // Split sentences into `threads` ranges of about equal token counts.
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(args.threads, args.n_sentences));
  std::vector<int64_t> bounds{0};
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t target = args.n_tokens * t / threads;
    const int64_t* it = std::lower_bound(args.sentence_starts, args.sentence_starts + args.n_sentences + 1, target);
    bounds.push_back(std::max(bounds.back(), static_cast<int64_t>(it - args.sentence_starts)));
  }
  bounds.push_back(args.n_sentences);
  std::vector<std::thread> pool;
  for (int64_t t = 0; t + 1 < static_cast<int64_t>(bounds.size()); ++t) {
    pool.emplace_back(worker, std::ref(shared), bounds[t], bounds[t + 1], t);
  }
  for (auto& th : pool) th.join();
  return shared.words_trained.load();
}

}  // namespace fastlm::cpu::w2v
