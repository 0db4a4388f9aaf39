// Test harness for the fixed-budget strategies (h2o, streaming): drives an
// EvictingKvManager and its rank caches with the real attention kernel on synthetic,
// deterministic Q/K/V, next to a plain reference that recomputes every probability in double
// from the same Q/K/V (never from the cache) and applies the strategy's rules by brute force.
#ifndef KVSCOPE_TESTS_KVCACHE_EVICTING_TEST_UTIL_H_
#define KVSCOPE_TESTS_KVCACHE_EVICTING_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "kvcache/evicting_kv_cache.h"

namespace kvscope::kvcache::testing {

// Global shapes: 2 layers, 2 KV heads, 4 query heads (GQA groups of 2), head_dim 8.
inline constexpr int kLayers = 2, kKvHeads = 2, kHeads = 4, kDim = 8;

inline KvGeometry SimGeometry(int tp) {
  KvGeometry g;
  g.num_layers = kLayers;
  g.kv_heads_per_rank = kKvHeads / tp;
  g.head_dim = kDim;
  g.bytes_per_element = 4;
  g.tp_size = tp;
  g.num_heads_per_rank = kHeads / tp;
  return g;
}

// Deterministic value in [-scale, scale) for (kind, seq, layer, pos, head, dim).
inline float SimValue(int kind, int64_t seq, int layer, int pos, int head, int dim) {
  uint64_t x = (static_cast<uint64_t>(kind) * 1000003ULL + seq) * 0x9E3779B97F4A7C15ULL;
  x ^= (static_cast<uint64_t>(layer) << 48) ^ (static_cast<uint64_t>(pos) << 20) ^
       (static_cast<uint64_t>(head) << 8) ^ static_cast<uint64_t>(dim);
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  x ^= x >> 31;
  const double u = static_cast<double>(x >> 11) / static_cast<double>(1ULL << 53);
  const double scale = kind == 0 ? 2.0 : 1.0;  // peakier attention from larger queries
  return static_cast<float>((2 * u - 1) * scale);
}
inline float Q(int64_t s, int l, int p, int h, int d) { return SimValue(0, s, l, p, h, d); }
inline float K(int64_t s, int l, int p, int h, int d) { return SimValue(1, s, l, p, h, d); }
inline float V(int64_t s, int l, int p, int h, int d) { return SimValue(2, s, l, p, h, d); }

// The strategy's rules, written plainly over positions and double scores.
struct RefRules {
  // Positions to keep after a prompt of `length` tokens (scores by position).
  std::function<std::set<int>(const std::map<int, double>& scores, int length)> compress;
  // Position to evict after the token at length - 1 was added.
  std::function<int(const std::map<int, double>& scores, int length)> victim;
};

class EvictingSim {
 public:
  EvictingSim(EvictingKvManager* manager, int tp, RefRules rules, int budget_of_all)
      : manager_(manager), tp_(tp), rules_(std::move(rules)) {
    for (int r = 0; r < tp; ++r) caches_.push_back(manager->CreateRankCache(r));
    (void)budget_of_all;
  }

  // Admits a sequence with a prompt of `prompt_len` tokens.
  void Admit(int64_t id, int prompt_len, int max_new) {
    std::vector<int32_t> tokens(prompt_len, 7);
    ASSERT_EQ(manager_->CanAdmit(SeqRequest{id, tokens, max_new}).status, AdmitStatus::kOk);
    ASSERT_TRUE(manager_->Admit(SeqRequest{id, tokens, max_new}).ok());
    Ref& ref = refs_[id];
    ref.prompt_len = prompt_len;
    ref.budget = manager_->BudgetOf(id).total;
  }

  // One step: each (seq, n) computes its next n tokens. Checks every attention output
  // against the reference, then applies the reference's compression / eviction.
  void Step(const std::vector<std::pair<int64_t, int>>& work) {
    std::vector<SeqStep> steps;
    for (const auto& [id, n] : work) {
      const int start = refs_[id].length;
      ASSERT_TRUE(manager_->Append(id, std::vector<int32_t>(n, 7))) << "seq " << id;
      steps.push_back({id, n, start});
    }
    auto plan = manager_->Plan(steps);
    ASSERT_TRUE(plan.ok()) << plan.status();
    int tokens = 0;
    std::vector<int32_t> token_seq, token_pos;
    std::vector<int64_t> token_id;
    for (size_t i = 0; i < steps.size(); ++i) {
      for (int j = 0; j < steps[i].num_new_tokens; ++j) {
        token_seq.push_back(static_cast<int32_t>(i));
        token_pos.push_back(steps[i].start_position + j);
        token_id.push_back(steps[i].seq_id);
        ++tokens;
      }
    }
    const int kvh = kKvHeads / tp_, qh = kHeads / tp_;
    for (int r = 0; r < tp_; ++r) {
      KvCache& cache = *caches_[r];
      ASSERT_TRUE(cache.PrepareStep(steps).ok());
      for (int l = 0; l < kLayers; ++l) {
        std::vector<float> k(tokens * kvh * kDim), v(k.size()), q(tokens * qh * kDim),
            out(q.size());
        for (int t = 0; t < tokens; ++t) {
          for (int h = 0; h < kvh; ++h) {
            for (int d = 0; d < kDim; ++d) {
              k[(t * kvh + h) * kDim + d] = K(token_id[t], l, token_pos[t], r * kvh + h, d);
              v[(t * kvh + h) * kDim + d] = V(token_id[t], l, token_pos[t], r * kvh + h, d);
            }
          }
          for (int h = 0; h < qh; ++h) {
            for (int d = 0; d < kDim; ++d) {
              q[(t * qh + h) * kDim + d] = Q(token_id[t], l, token_pos[t], r * qh + h, d);
            }
          }
        }
        const kernels::KvPoolView pool = cache.Pool(l);
        ASSERT_TRUE(kernels::WriteKv(pool, k.data(), v.data(), kvh * kDim,
                                     cache.NewTokenSlots().data(), tokens)
                        .ok());
        auto views = cache.SeqViews(l);
        int64_t max_cached = 0;
        float* mass = cache.AttentionMassBuffer(l, qh, &max_cached);
        ASSERT_TRUE(kernels::Attention(q.data(), qh * kDim, tokens, qh, kDim, token_seq.data(),
                                       token_pos.data(), pool, views.data(),
                                       static_cast<int32_t>(views.size()),
                                       static_cast<float>(1.0 / std::sqrt(kDim)), out.data(),
                                       qh * kDim, mass, max_cached)
                        .ok());
        cache.OnAttention(l);
        // Reference outputs.
        for (int t = 0; t < tokens; ++t) {
          for (int h = 0; h < qh; ++h) {
            const int gq = r * qh + h;
            std::vector<double> o = RefAttend(token_id[t], l, gq, token_pos[t]);
            for (int d = 0; d < kDim; ++d) {
              ASSERT_NEAR(out[(t * qh + h) * kDim + d], o[d], 1e-5)
                  << "seq " << token_id[t] << " layer " << l << " head " << gq << " pos "
                  << token_pos[t];
            }
          }
        }
      }
    }
    // The reference's bookkeeping: scores of the step's queries, then compress / evict.
    for (const SeqStep& s : steps) {
      Ref& ref = refs_[s.seq_id];
      const int end = s.start_position + s.num_new_tokens;
      for (int l = 0; l < kLayers; ++l) {
        for (int g = 0; g < kKvHeads; ++g) {
          std::map<int, double> add;
          for (int p = s.start_position; p < end; ++p) {
            for (int i = 0; i < kHeads / kKvHeads; ++i) {
              const int gq = g * (kHeads / kKvHeads) + i;
              for (const auto& [pos, prob] : RefProbs(s.seq_id, l, gq, p)) add[pos] += prob;
            }
          }
          auto& scores = ref.scores[{l, g}];
          for (int p = s.start_position; p < end; ++p) scores[p] = 0.0;
          for (const auto& [pos, mass] : add) scores[pos] += mass;
          if (end == ref.prompt_len && s.start_position < ref.prompt_len &&
              ref.prompt_len > ref.budget) {
            const std::set<int> keep = rules_.compress(scores, end);
            ASSERT_EQ(static_cast<int>(keep.size()), ref.budget);
            for (auto it = scores.begin(); it != scores.end();) {
              it = keep.count(it->first) ? std::next(it) : scores.erase(it);
            }
          } else if (end > ref.prompt_len && static_cast<int>(scores.size()) > ref.budget) {
            scores.erase(rules_.victim(scores, end));
          }
        }
      }
      ref.length = end;
    }
  }

  // The reference's kept positions of (seq, layer, global KV head), ascending.
  std::vector<int32_t> RefKept(int64_t id, int layer, int g) {
    std::vector<int32_t> out;
    for (const auto& [pos, score] : refs_[id].scores[{layer, g}]) out.push_back(pos);
    return out;
  }

  // Checks the manager's kept sets and memory against the reference.
  void ExpectKeptSetsMatch(int64_t id) {
    for (int l = 0; l < kLayers; ++l) {
      for (int g = 0; g < kKvHeads; ++g) {
        std::vector<int32_t> held = manager_->HeldPositions(id, l, g);
        std::sort(held.begin(), held.end());
        ASSERT_EQ(held, RefKept(id, l, g))
            << "seq " << id << " layer " << l << " kv head " << g << " at length "
            << refs_[id].length;
      }
    }
    EXPECT_EQ(manager_->NumTokens(id), static_cast<int32_t>(RefKept(id, 0, 0).size()));
  }

  int length(int64_t id) { return refs_[id].length; }

 private:
  struct Ref {
    int prompt_len = 0;
    int budget = 0;
    int length = 0;
    std::map<std::pair<int, int>, std::map<int, double>> scores;  // (layer, kv head) -> kept
  };

  // Probabilities of query (seq, layer, global query head gq, position p) over the tokens it
  // sees: the kept ones of its KV head plus this step's earlier tokens (all tokens up to p
  // that the reference has not evicted).
  std::map<int, double> RefProbs(int64_t id, int l, int gq, int p) {
    Ref& ref = refs_[id];
    const int g = gq / (kHeads / kKvHeads);
    std::vector<int> visible;
    for (const auto& [pos, score] : ref.scores[{l, g}]) {
      if (pos <= p) visible.push_back(pos);
    }
    for (int pos = ref.length; pos <= p; ++pos) visible.push_back(pos);  // this step's tokens
    std::map<int, double> probs;
    double max = -1e300;
    for (int pos : visible) {
      double dot = 0;
      for (int d = 0; d < kDim; ++d) dot += static_cast<double>(Q(id, l, p, gq, d)) * K(id, l, pos, g, d);
      probs[pos] = dot / std::sqrt(static_cast<double>(kDim));
      max = std::max(max, probs[pos]);
    }
    double sum = 0;
    for (auto& [pos, x] : probs) sum += (x = std::exp(x - max));
    for (auto& [pos, x] : probs) x /= sum;
    return probs;
  }

  std::vector<double> RefAttend(int64_t id, int l, int gq, int p) {
    const int g = gq / (kHeads / kKvHeads);
    std::vector<double> o(kDim, 0.0);
    for (const auto& [pos, prob] : RefProbs(id, l, gq, p)) {
      for (int d = 0; d < kDim; ++d) o[d] += prob * V(id, l, pos, g, d);
    }
    return o;
  }

  EvictingKvManager* manager_;
  int tp_;
  RefRules rules_;
  std::vector<std::unique_ptr<KvCache>> caches_;
  std::map<int64_t, Ref> refs_;
};

}  // namespace kvscope::kvcache::testing

#endif  // KVSCOPE_TESTS_KVCACHE_EVICTING_TEST_UTIL_H_
