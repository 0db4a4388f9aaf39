// File: tests/kernels/reference_ops.h
//
// Plain double-precision loop implementations of the ops in kernels/ops.h, written for
// clarity, not speed, plus the random-input and comparison helpers the kernel tests share.
// The references are themselves checked against closed-form cases (reference_ops_test.cc).
// Everything here is header-only and stateless (thread-safe).
#ifndef KVSCOPE_TESTS_KERNELS_REFERENCE_OPS_H_
#define KVSCOPE_TESTS_KERNELS_REFERENCE_OPS_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace kvscope::kernels::reference {

// ---------------------------------------------------------------------------------------
// Helpers

// n floats uniform in [lo, hi) from `rng`.
inline std::vector<float> RandomFloats(std::mt19937& rng, int64_t n, float lo = -1.0f,
                                       float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// Checks |actual[i] - expected[i]| <= atol + rtol * |expected[i]| for every i; reports the
// first few failures with their index.
inline ::testing::AssertionResult AllClose(const std::vector<float>& actual,
                                           const std::vector<double>& expected, double rtol,
                                           double atol) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure()
           << "size " << actual.size() << " != expected size " << expected.size();
  }
  int failures = 0;
  double worst = 0.0;
  ::testing::AssertionResult result = ::testing::AssertionSuccess();
  std::string message;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double err = std::abs(static_cast<double>(actual[i]) - expected[i]);
    const double tol = atol + rtol * std::abs(expected[i]);
    if (!(err <= tol)) {  // NaN fails too
      if (failures < 5) {
        message += "\n  [" + std::to_string(i) + "] actual " + std::to_string(actual[i]) +
                   " expected " + std::to_string(expected[i]) + " err " + std::to_string(err);
      }
      ++failures;
      worst = std::max(worst, err);
    }
  }
  if (failures == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << failures << " of " << actual.size()
                                       << " elements out of tolerance (worst err " << worst
                                       << ")" << message;
}

// ---------------------------------------------------------------------------------------
// Elementwise and normalization

inline std::vector<double> RmsNorm(const std::vector<float>& x, const std::vector<float>& w,
                                   double eps, int64_t rows, int64_t cols) {
  std::vector<double> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0.0;
    for (int64_t c = 0; c < cols; ++c) ss += double{x[r * cols + c]} * x[r * cols + c];
    const double inv = 1.0 / std::sqrt(ss / cols + eps);
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = x[r * cols + c] * inv * w[c];
  }
  return out;
}

// bias may be empty (no bias).
inline std::vector<double> LayerNorm(const std::vector<float>& x, const std::vector<float>& w,
                                     const std::vector<float>& bias, double eps, int64_t rows,
                                     int64_t cols) {
  std::vector<double> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0.0;
    for (int64_t c = 0; c < cols; ++c) mean += x[r * cols + c];
    mean /= cols;
    double var = 0.0;
    for (int64_t c = 0; c < cols; ++c) {
      var += (x[r * cols + c] - mean) * (x[r * cols + c] - mean);
    }
    var /= cols;
    for (int64_t c = 0; c < cols; ++c) {
      out[r * cols + c] = (x[r * cols + c] - mean) / std::sqrt(var + eps) * w[c] +
                          (bias.empty() ? 0.0 : double{bias[c]});
    }
  }
  return out;
}

inline double Silu(double x) { return x / (1.0 + std::exp(-x)); }

// RoPE on a [tokens, heads, head_dim] buffer with row stride token_stride; returns the whole
// buffer (untouched entries copied). The angle follows the PyTorch float32 convention
// (float(position) * inv_freq rounded to float); everything after it is double.
inline std::vector<double> Rope(const std::vector<float>& x, int64_t tokens, int64_t heads,
                                int64_t head_dim, int64_t token_stride,
                                const std::vector<int32_t>& positions,
                                const std::vector<float>& inv_freq, int64_t rot_dim,
                                double scaling) {
  std::vector<double> out(x.begin(), x.end());
  const int64_t half = rot_dim / 2;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t base = t * token_stride + h * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(positions[t]) * inv_freq[i];
        const double c = std::cos(double{angle}) * scaling;
        const double s = std::sin(double{angle}) * scaling;
        const double a = x[base + i];
        const double b = x[base + i + half];
        out[base + i] = a * c - b * s;
        out[base + i + half] = b * c + a * s;
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Linear: y[m][n] = Σ_k x[m][k] w[n][k] (w row stride ldw) + bias[n] + y0[m][n].
// bias / y0 may be empty.
inline std::vector<double> Linear(const std::vector<float>& x, int64_t m, int64_t k,
                                  const float* w, int64_t n, int64_t ldw,
                                  const std::vector<float>& bias,
                                  const std::vector<float>& y0) {
  std::vector<double> y(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (int64_t kk = 0; kk < k; ++kk) acc += double{x[i * k + kk]} * w[j * ldw + kk];
      if (!bias.empty()) acc += bias[j];
      if (!y0.empty()) acc += y0[i * n + j];
      y[i * n + j] = acc;
    }
  }
  return y;
}

// ---------------------------------------------------------------------------------------
// Attention, on logical (unpaged) inputs.

inline std::vector<double> Softmax(const std::vector<double>& scores) {
  double mx = -INFINITY;
  for (double s : scores) mx = std::max(mx, s);
  std::vector<double> p(scores.size());
  double sum = 0.0;
  for (size_t i = 0; i < scores.size(); ++i) sum += p[i] = std::exp(scores[i] - mx);
  for (double& v : p) v /= sum;
  return p;
}

// One cached entry as the reference sees it: its position and its k, v vectors.
struct CachedEntry {
  int32_t position = 0;
  std::vector<float> k;  // [head_dim]
  std::vector<float> v;  // [head_dim]
};

// Logical KV of one sequence: entries[kv_head][j], the j-th listed entry of that head.
struct LogicalSeq {
  std::vector<std::vector<CachedEntry>> entries;
};

struct AttentionResult {
  std::vector<double> out;  // [tokens, num_heads, head_dim] (contiguous)
  // probs[t][h][j]: probability of token t, head h on entry j of its head's list (0 when
  // not visible).
  std::vector<std::vector<std::vector<double>>> probs;
};

// q: [tokens, num_heads, head_dim] contiguous.
inline AttentionResult Attention(const std::vector<float>& q, int64_t tokens, int num_heads,
                                 int head_dim, const std::vector<int32_t>& token_seq,
                                 const std::vector<int32_t>& token_pos,
                                 const std::vector<LogicalSeq>& seqs, int num_kv_heads,
                                 double scale) {
  AttentionResult r;
  r.out.assign(static_cast<size_t>(tokens * num_heads * head_dim), 0.0);
  r.probs.resize(tokens);
  const int group = num_heads / num_kv_heads;
  for (int64_t t = 0; t < tokens; ++t) {
    r.probs[t].resize(num_heads);
    for (int h = 0; h < num_heads; ++h) {
      const auto& list = seqs[token_seq[t]].entries[h / group];
      std::vector<double> scores;
      std::vector<size_t> visible;
      for (size_t j = 0; j < list.size(); ++j) {
        if (list[j].position > token_pos[t]) continue;
        double dot = 0.0;
        for (int d = 0; d < head_dim; ++d) {
          dot += double{q[(t * num_heads + h) * head_dim + d]} * list[j].k[d];
        }
        scores.push_back(dot * scale);
        visible.push_back(j);
      }
      const std::vector<double> p = Softmax(scores);
      r.probs[t][h].assign(list.size(), 0.0);
      for (size_t i = 0; i < visible.size(); ++i) {
        r.probs[t][h][visible[i]] = p[i];
        for (int d = 0; d < head_dim; ++d) {
          r.out[(t * num_heads + h) * head_dim + d] += p[i] * list[visible[i]].v[d];
        }
      }
    }
  }
  return r;
}

// ---------------------------------------------------------------------------------------
// Sampling

// The distribution SampleToken draws from, per the ops.h contract, computed the obvious way:
// softmax(logits / T) in double over all tokens, full sort by (probability desc, index asc),
// top-k, top-p over the top-k set, renormalize. Returns probabilities [vocab] (0 = dropped).
inline std::vector<double> SampleDistribution(const std::vector<float>& logits, double t,
                                              int top_k, double top_p) {
  const int64_t v = static_cast<int64_t>(logits.size());
  std::vector<double> z(v);
  for (int64_t i = 0; i < v; ++i) z[i] = logits[i] / t;
  const std::vector<double> p = Softmax(z);
  std::vector<int64_t> order(v);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return p[a] > p[b]; });  // stable: index asc
  int64_t keep = (top_k > 0 && top_k < v) ? top_k : v;
  double mass_k = 0.0;
  for (int64_t i = 0; i < keep; ++i) mass_k += p[order[i]];
  if (top_p < 1.0) {
    double cum = 0.0;
    int64_t n = 0;
    while (n < keep) {
      cum += p[order[n]] / mass_k;
      ++n;
      if (cum >= top_p) break;
    }
    keep = std::max<int64_t>(n, 1);
  }
  std::vector<double> out(v, 0.0);
  double mass = 0.0;
  for (int64_t i = 0; i < keep; ++i) mass += p[order[i]];
  for (int64_t i = 0; i < keep; ++i) out[order[i]] = p[order[i]] / mass;
  return out;
}

// The token whose interval (laid out in ascending token id) contains u.
inline int32_t SampleFrom(const std::vector<double>& dist, double u) {
  double cum = 0.0;
  int32_t last = 0;
  for (size_t i = 0; i < dist.size(); ++i) {
    if (dist[i] <= 0.0) continue;
    cum += dist[i];
    last = static_cast<int32_t>(i);
    if (u < cum) return last;
  }
  return last;
}

}  // namespace kvscope::kernels::reference

#endif  // KVSCOPE_TESTS_KERNELS_REFERENCE_OPS_H_
