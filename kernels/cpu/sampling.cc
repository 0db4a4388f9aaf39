// File: kernels/cpu/sampling.cc
//
// CPU reference implementations of Argmax and SampleToken (kernels/ops.h).
//
// Token order used for top-k / top-p: descending logit, lower index first on ties. Dividing
// by temperature > 0 and exp() are monotone, so this is the order of descending probability
// (tokens whose probabilities differ only through underflow to 0 carry no mass). NaN logits
// rank as -inf and get probability 0. Argmax ignores NaN (a row of only NaN gives 0).
//
// Cost of SampleToken: O(V) for the softmax plus O(V) selection for top-k; top-p buckets the
// probabilities by exponent and sorts only the leading buckets (see TopPPrefix), O(V log V)
// at worst. Sums are taken in ascending token id, so the result is a function of
// the inputs alone (no dependence on thread count or library sort internals).
#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <vector>

#include "kernels/ops.h"

namespace kvscope::kernels {
namespace {

constexpr int64_t kParallelMinElements = int64_t{1} << 15;

inline float RankKey(float x) {
  return std::isnan(x) ? -std::numeric_limits<float>::infinity() : x;
}

// Lowest index of the maximum, NaN ignored; 0 when every entry is NaN.
int32_t ArgmaxRow(const float* row, int64_t vocab) {
  int64_t best = 0;
  float best_value = RankKey(row[0]);
  for (int64_t i = 1; i < vocab; ++i) {
    if (row[i] > best_value) {  // false for NaN
      best_value = row[i];
      best = i;
    }
  }
  return static_cast<int32_t>(best);
}

// The smallest prefix, in rank order (`before`), of the tokens `cand` whose mass (Σ p, summed
// in rank order) reaches `target`; all of `cand` if none does. p[i] in [0, 1] with p = 1 for
// the top token.
//
// Fast path: one pass buckets p by binary exponent (mass and membership per bucket). Every
// token ranked before a token of bucket b lies in a bucket <= b, so the tokens of buckets
// <= c form a prefix of the rank order; only that prefix, through the bucket where the bucket
// sums cross `target` plus one bucket of slack for rounding, is sorted and scanned. The scan
// sums the same rank-order prefix as a full sort would, so the result is exactly that of
// sorting everything.
template <typename Before>
std::vector<int32_t> TopPPrefix(const std::vector<int32_t>& cand, const double* p,
                                double target, Before before) {
  constexpr int kBuckets = 96;  // bucket b: p in [2^-b, 2^(1-b)); the last also holds smaller
  std::vector<uint8_t> bucket(cand.size());
  double bucket_mass[kBuckets] = {};
  for (size_t i = 0; i < cand.size(); ++i) {
    const double pi = p[cand[i]];
    const int b = pi > 0.0 ? std::min(kBuckets - 1, std::max(0, -std::ilogb(pi))) : kBuckets - 1;
    bucket[i] = static_cast<uint8_t>(b);
    bucket_mass[b] += pi;
  }
  int cut = kBuckets - 1;
  double mass = 0.0;
  for (int b = 0; b < kBuckets; ++b) {
    mass += bucket_mass[b];
    if (mass >= target) {
      cut = std::min(b + 1, kBuckets - 1);
      break;
    }
  }
  // The exact prefix sums can fall short of the bucket sums by rounding; then widen to all.
  for (;; cut = kBuckets - 1) {
    std::vector<int32_t> order;
    for (size_t i = 0; i < cand.size(); ++i) {
      if (bucket[i] <= cut) order.push_back(cand[i]);
    }
    std::sort(order.begin(), order.end(), before);
    double cum = 0.0;
    for (size_t j = 0; j < order.size(); ++j) {
      cum += p[order[j]];
      if (cum >= target) {
        order.resize(j + 1);
        return order;
      }
    }
    if (cut == kBuckets - 1) return order;  // never reached: everything
  }
}

}  // namespace

void Argmax(const float* logits, int64_t rows, int64_t vocab, int32_t* ids) {
  assert(rows >= 0 && vocab > 0);
#pragma omp parallel for schedule(static) if (rows > 1 && rows * vocab >= kParallelMinElements)
  for (int64_t r = 0; r < rows; ++r) ids[r] = ArgmaxRow(logits + r * vocab, vocab);
}

int32_t SampleToken(const float* logits, int64_t vocab, float temperature, int32_t top_k,
                    float top_p, double u) {
  assert(vocab > 0);
  if (!(temperature > 0.0f)) return ArgmaxRow(logits, vocab);

  // "a ranks before b": descending logit, lower index on ties.
  auto before = [logits](int32_t a, int32_t b) {
    const float ka = RankKey(logits[a]);
    const float kb = RankKey(logits[b]);
    return ka > kb || (ka == kb && a < b);
  };

  // Step 2 first (it only depends on the order): the candidate set, in ascending token id.
  std::vector<int32_t> cand(static_cast<size_t>(vocab));
  std::iota(cand.begin(), cand.end(), 0);
  if (top_k > 0 && top_k < vocab) {
    std::nth_element(cand.begin(), cand.begin() + (top_k - 1), cand.end(), before);
    cand.resize(top_k);
    std::sort(cand.begin(), cand.end());
  }

  // Step 1: softmax in double over the candidates (renormalizing over the top-k set is the
  // same as softmax over all then renormalizing). p is unnormalized: exp(z - z_max).
  const int32_t top = *std::min_element(cand.begin(), cand.end(), before);
  if (!std::isfinite(logits[top])) return top;  // +inf wins outright; all -inf/NaN: argmax
  const double t = temperature;
  const double z_max = static_cast<double>(logits[top]) / t;
  std::unique_ptr<double[]> p(new double[static_cast<size_t>(vocab)]);
  double total = 0.0;
  for (int32_t i : cand) {
    p[i] = std::isnan(logits[i]) ? 0.0 : std::exp(static_cast<double>(logits[i]) / t - z_max);
    total += p[i];
  }

  // Step 3: smallest prefix in rank order whose mass >= top_p * total (at least one token).
  if (top_p < 1.0f && cand.size() > 1) {
    std::vector<int32_t> kept =
        TopPPrefix(cand, p.get(), static_cast<double>(top_p) * total, before);
    std::sort(kept.begin(), kept.end());
    cand.swap(kept);
    total = 0.0;
    for (int32_t i : cand) total += p[i];
  }

  // Step 4: intervals laid out in ascending token id over the kept set.
  const double uu = (u > 0.0) ? u : 0.0;  // also maps NaN to 0
  const double threshold = uu * total;
  double cum = 0.0;
  for (int32_t i : cand) {
    cum += p[i];
    if (threshold < cum) return i;
  }
  // u >= 1 or rounding at the top end: the last kept token with nonzero mass.
  for (auto it = cand.rbegin(); it != cand.rend(); ++it) {
    if (p[*it] > 0.0) return *it;
  }
  return top;
}

}  // namespace kvscope::kernels
