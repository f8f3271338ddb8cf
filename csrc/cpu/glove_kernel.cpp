// GloVe counting and training loops (see glove_kernel.h).
#include "cpu/glove_kernel.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <thread>
#include <unordered_map>
#include <utility>

#include "cpu/vectorize.h"

namespace fastlm::cpu::glove {
namespace {

using PairMap = std::unordered_map<uint64_t, float>;

inline uint64_t pair_key(int32_t row, int32_t col) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(row)) << 32) | static_cast<uint32_t>(col);
}

void count_range(const int32_t* tokens, const int64_t* starts, int64_t s0, int64_t s1, int64_t window, PairMap& out) {
  for (int64_t s = s0; s < s1; ++s) {
    const int64_t begin = starts[s], end = starts[s + 1];
    for (int64_t pos = begin; pos < end; ++pos) {
      const int64_t lo = std::max(begin, pos - window);
      for (int64_t c = lo; c < pos; ++c) {
        const float weight = 1.f / static_cast<float>(pos - c);
        out[pair_key(tokens[pos], tokens[c])] += weight;
        out[pair_key(tokens[c], tokens[pos])] += weight;
      }
    }
  }
}

FASTLM_MULTIVERSION
double train_range(const GloveArgs& a, const int64_t* order, int64_t i0, int64_t i1) {
  const int64_t d = a.dim;
  double cost = 0;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t p = order[i];
    const int64_t r = a.rows[p], c = a.cols[p];
    const float x = a.values[p];
    float* wr = a.w + r * d;
    float* wcc = a.wc + c * d;
    float* gw = a.grad_w + r * d;
    float* gwc = a.grad_wc + c * d;
    float diff = a.b[r] + a.bc[c] - std::log(x);
#pragma omp simd reduction(+ : diff)
    for (int64_t k = 0; k < d; ++k) diff += wr[k] * wcc[k];
    const float weight = x < a.x_max ? std::pow(x / a.x_max, a.alpha) : 1.f;
    const float fdiff = weight * diff;
    if (!std::isfinite(fdiff)) continue;  // a diverged pair would poison its rows: skip it
    cost += 0.5 * static_cast<double>(fdiff) * diff;
    const float lr = a.lr;  // a local: the stores below cannot change it, so the loop vectorizes
    const float step = fdiff * lr;
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) {
      const float g1 = fdiff * wcc[k], g2 = fdiff * wr[k];
      wr[k] -= lr * g1 / std::sqrt(gw[k]);
      wcc[k] -= lr * g2 / std::sqrt(gwc[k]);
      gw[k] += g1 * g1;
      gwc[k] += g2 * g2;
    }
    a.b[r] -= step / std::sqrt(a.grad_b[r]);
    a.bc[c] -= step / std::sqrt(a.grad_bc[c]);
    a.grad_b[r] += fdiff * fdiff;
    a.grad_bc[c] += fdiff * fdiff;
  }
  return cost;
}

template <typename Fn>
void run_threads(int64_t threads, int64_t n, Fn fn) {
  threads = std::max<int64_t>(1, std::min(threads, std::max<int64_t>(n, 1)));
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < threads; ++t) pool.emplace_back(fn, t, n * t / threads, n * (t + 1) / threads);
  for (auto& th : pool) th.join();
}

}  // namespace

Cooccurrences count_cooccurrences(const int32_t* tokens, const int64_t* sentence_starts, int64_t n_sentences,
                                  int64_t window, int64_t threads) {
  std::vector<PairMap> maps(std::max<int64_t>(1, std::min(threads, std::max<int64_t>(n_sentences, 1))));
  run_threads(static_cast<int64_t>(maps.size()), n_sentences, [&](int64_t t, int64_t s0, int64_t s1) {
    count_range(tokens, sentence_starts, s0, s1, window, maps[t]);
  });
  std::vector<std::pair<uint64_t, float>> all;
  size_t total = 0;
  for (auto& m : maps) total += m.size();
  all.reserve(total);
  for (auto& m : maps) {
    all.insert(all.end(), m.begin(), m.end());
    PairMap().swap(m);  // free as we go
  }
  std::sort(all.begin(), all.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  Cooccurrences out;
  for (size_t i = 0; i < all.size();) {
    const uint64_t key = all[i].first;
    double sum = 0;
    for (; i < all.size() && all[i].first == key; ++i) sum += all[i].second;
    out.rows.push_back(static_cast<int32_t>(key >> 32));
    out.cols.push_back(static_cast<int32_t>(key & 0xFFFFFFFFu));
    out.values.push_back(static_cast<float>(sum));
  }
  return out;
}

void train_glove(const GloveArgs& a, double* epoch_costs) {
  std::vector<int64_t> order(a.n_pairs);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(a.seed);
  for (int64_t epoch = 0; epoch < a.epochs; ++epoch) {
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<double> costs(std::max<int64_t>(1, a.threads), 0.0);
    run_threads(a.threads, a.n_pairs, [&](int64_t t, int64_t i0, int64_t i1) {
      costs[t] = train_range(a, order.data(), i0, i1);
    });
    const double cost = std::accumulate(costs.begin(), costs.end(), 0.0);
    epoch_costs[epoch] = a.n_pairs > 0 ? cost / static_cast<double>(a.n_pairs) : 0.0;
  }
}

}  // namespace fastlm::cpu::glove
