// infinigen (kvcache side): each decode step's selection against a plain oracle over the
// partial scores, the exact bytes moved, prefetched K/V equal to the host pool, the
// counter-based host eviction limit, kv_budget mapping and refused parameters.
#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvcache/infinigen_kv_cache.h"
#include "kvcache/infinigen_kv_manager.h"
#include "kvcache/infinigen_selection.h"
#include "kvcache/registry.h"

namespace kvscope::kvcache {
namespace {

using ::testing::HasSubstr;

constexpr int kLayers = 4, kKvHeads = 2, kHeads = 4, kDim = 8;

KvManagerContext Context() {
  KvManagerContext c;
  c.geometry.num_layers = kLayers;
  c.geometry.kv_heads_per_rank = kKvHeads;
  c.geometry.num_heads_per_rank = kHeads;
  c.geometry.head_dim = kDim;
  c.geometry.bytes_per_element = 4;
  c.geometry.tp_size = 1;
  c.kv_memory_bytes = 1 << 20;
  c.max_model_len = 256;
  return c;
}

// Identity skew (selection does not depend on A) with different columns per head.
std::shared_ptr<const InfinigenSkew> Skew(int32_t partial_dim) {
  auto s = std::make_shared<InfinigenSkew>();
  s->num_layers = kLayers;
  s->num_kv_heads = kKvHeads;
  s->head_dim = kDim;
  s->partial_dim = partial_dim;
  s->a.assign(kLayers * kKvHeads * kDim * kDim, 0.0f);
  for (int lh = 0; lh < kLayers * kKvHeads; ++lh) {
    for (int i = 0; i < kDim; ++i) s->a[(lh * kDim + i) * kDim + i] = 1.0f;
    for (int c = 0; c < partial_dim; ++c) s->columns.push_back((lh + 3 * c) % kDim);
    std::sort(s->columns.end() - partial_dim, s->columns.end());
  }
  return s;
}

// The test's own copy of everything written: [layer][position][kv head][dim].
struct Written {
  std::vector<std::vector<float>> k, v;
};

// Writes random K/V for `n` new tokens of the planned step into layer `layer`.
void WriteLayer(InfinigenKvCache& cache, int layer, int n, std::mt19937& rng, Written& w) {
  std::normal_distribution<float> dist;
  std::vector<float> k(n * kKvHeads * kDim), v(k.size());
  for (float& x : k) x = dist(rng);
  for (float& x : v) x = dist(rng);
  ASSERT_TRUE(kernels::WriteKv(cache.Pool(layer), k.data(), v.data(), kKvHeads * kDim,
                               cache.NewTokenSlots().data(), n)
                  .ok());
  w.k[layer].insert(w.k[layer].end(), k.begin(), k.end());
  w.v[layer].insert(w.v[layer].end(), v.begin(), v.end());
}

const float* PoolAt(const kernels::KvPoolView& p, const float* base, int slot, int head) {
  return base +
         ((static_cast<int64_t>(slot) / p.block_size) * p.num_kv_heads + head) * p.block_size *
             p.head_dim +
         (slot % p.block_size) * p.head_dim;
}

// The rule of kv-strategies.md §4.4, written plainly: per query head the partial scores over
// the earlier tokens, tokens within alpha of the max counted, n' = floor(mean count) capped
// at max_num_kv; per KV head the n' best by the group's maximum score (ties: earlier).
std::vector<std::vector<int>> Oracle(const std::vector<float>& pq, const Written& w, int layer,
                                     int position, const InfinigenSkew& skew, double alpha,
                                     int max_num_kv) {
  const int pd = skew.partial_dim, group = kHeads / kKvHeads;
  std::vector<std::vector<double>> s(kHeads, std::vector<double>(position));
  int64_t total = 0;
  for (int h = 0; h < kHeads; ++h) {
    const int kh = h / group;
    const int32_t* cols = skew.Columns(layer, kh);
    for (int p = 0; p < position; ++p) {
      double dot = 0;
      for (int c = 0; c < pd; ++c) {
        dot +=
            static_cast<double>(pq[h * pd + c]) * w.k[layer][(p * kKvHeads + kh) * kDim + cols[c]];
      }
      s[h][p] = dot;
    }
    const double max = *std::max_element(s[h].begin(), s[h].end());
    for (int p = 0; p < position; ++p) total += s[h][p] > max - alpha;
  }
  const int n = std::min<int64_t>({total / kHeads, max_num_kv, position});
  std::vector<std::vector<int>> picked(kKvHeads);
  for (int kh = 0; kh < kKvHeads; ++kh) {
    std::vector<std::pair<double, int>> order;
    for (int p = 0; p < position; ++p) {
      double best = -INFINITY;
      for (int h = kh * group; h < (kh + 1) * group; ++h) best = std::max(best, s[h][p]);
      order.push_back({-best, p});
    }
    std::sort(order.begin(), order.end());
    for (int j = 0; j < n; ++j) picked[kh].push_back(order[j].second);
    std::sort(picked[kh].begin(), picked[kh].end());
  }
  return picked;
}

struct Harness {
  std::unique_ptr<InfinigenKvManager> manager;
  std::unique_ptr<KvCache> cache_owner;
  InfinigenKvCache* cache = nullptr;
};

Harness Make(const InfinigenOptions& options) {
  Harness r;
  auto m = InfinigenKvManager::Create(Context(), options);
  EXPECT_TRUE(m.ok()) << m.status();
  r.manager = std::move(*m);
  EXPECT_TRUE(r.manager->SetSkew(Skew(r.manager->partial_dim())).ok());
  r.cache_owner = r.manager->CreateRankCache(0);
  r.cache = dynamic_cast<InfinigenKvCache*>(r.cache_owner.get());
  return r;
}

TEST(InfinigenSelectionTest, EveryStepMatchesOracleAndBytesAreExact) {
  for (double alpha : {0.5, 2.0, 1e9}) {
    InfinigenOptions options;
    options.alpha = alpha;
    options.partial_ratio = 0.5;
    options.max_num_kv = 6;
    options.mass_sample_interval = 0;
    Harness r = Make(options);
    const int prompt = 13, steps = 6;
    std::vector<int32_t> ids(prompt, 1);
    ASSERT_EQ(r.manager->CanAdmit({7, ids, steps}).status, AdmitStatus::kOk);
    ASSERT_TRUE(r.manager->Admit({7, ids, steps}).ok());
    ASSERT_TRUE(r.manager->Append(7, ids));
    std::mt19937 rng(42);
    Written w;
    w.k.resize(kLayers);
    w.v.resize(kLayers);
    SeqStep step{7, prompt, 0};
    ASSERT_TRUE(r.manager->Plan(absl::MakeConstSpan(&step, 1)).ok());
    ASSERT_TRUE(r.cache->PrepareStep(absl::MakeConstSpan(&step, 1)).ok());
    for (int l = 0; l < kLayers; ++l) {
      WriteLayer(*r.cache, l, prompt, rng, w);
      EXPECT_EQ(r.cache->SeqViews(l)[0].num_cached, prompt);  // prefill: dense
      r.cache->OnAttention(l);
    }
    EXPECT_EQ(r.manager->Counters().h2d_bytes, 0);
    int64_t expected_bytes = 0;
    const int64_t token_head_bytes = 2 * kDim * sizeof(float);
    std::normal_distribution<float> dist(0.0f, 2.0f);
    for (int t = 0; t < steps; ++t) {
      const int position = prompt + t;
      int32_t id = 1;
      ASSERT_TRUE(r.manager->Append(7, absl::MakeConstSpan(&id, 1)));
      step = {7, 1, position};
      ASSERT_TRUE(r.manager->Plan(absl::MakeConstSpan(&step, 1)).ok());
      ASSERT_TRUE(r.cache->PrepareStep(absl::MakeConstSpan(&step, 1)).ok());
      ASSERT_EQ(r.cache->SpeculationRows().size(), 1u);
      expected_bytes += 2 * kKvHeads * position * token_head_bytes;  // layers 0 and 1
      for (int l = 0; l < kLayers; ++l) {
        std::vector<float> pq(kHeads * r.manager->partial_dim());
        if (l >= 2) {
          for (float& x : pq) x = dist(rng);
          ASSERT_TRUE(r.cache->Speculate(l, pq.data()).ok());
        }
        WriteLayer(*r.cache, l, 1, rng, w);
        const kernels::SeqKvView view = r.cache->SeqViews(l)[0];
        if (l < 2) {
          EXPECT_EQ(view.num_cached, position + 1);
          EXPECT_EQ(view.head_stride, 0);
        } else {
          const auto want = Oracle(pq, w, l, position, *r.manager->skew(), alpha, 6);
          const kernels::KvPoolView pool = r.cache->Pool(l);
          for (int kh = 0; kh < kKvHeads; ++kh) {
            std::vector<int32_t> got = r.cache->SelectedPositions(l, 0, kh);
            EXPECT_EQ(std::vector<int>(got.begin(), got.end()), want[kh])
                << "alpha " << alpha << " step " << t << " layer " << l << " head " << kh;
            ASSERT_EQ(view.num_cached, static_cast<int>(want[kh].size()) + 1);
            EXPECT_EQ(view.positions[kh * view.head_stride + view.num_cached - 1], position);
            // The prefetched K/V equal what was written for that token.
            for (int j = 0; j + 1 < view.num_cached; ++j) {
              const int p = view.positions[kh * view.head_stride + j];
              const int slot = view.slots[kh * view.head_stride + j];
              for (int d = 0; d < kDim; ++d) {
                EXPECT_EQ(PoolAt(pool, pool.k, slot, kh)[d],
                          w.k[l][(p * kKvHeads + kh) * kDim + d]);
                EXPECT_EQ(PoolAt(pool, pool.v, slot, kh)[d],
                          w.v[l][(p * kKvHeads + kh) * kDim + d]);
              }
            }
          }
          expected_bytes += static_cast<int64_t>(want[0].size()) * kKvHeads * token_head_bytes;
        }
        r.cache->OnAttention(l);
      }
      EXPECT_EQ(r.manager->Counters().h2d_bytes, expected_bytes) << "step " << t;
    }
    const KvCounters c = r.manager->Counters();
    EXPECT_EQ(c.selections, steps * (kLayers - 2));
    if (alpha > 1e6) {
      EXPECT_EQ(c.selected_tokens, steps * (kLayers - 2) * 6);
    }
  }
}

// The device half's hook (engine/cuda/gpu_infinigen.h): a cache without host storage that
// is told the selections (RecordSpeculation, from SpeculationCandidates' lists) ends every
// step with the views, selected positions, counters and eviction state of a cache that ran
// Speculate itself; with and without host-pool eviction.
TEST(InfinigenRecordTest, RecordedSelectionsEqualSpeculate) {
  for (double capacity : {1.0, 0.6}) {
    SCOPED_TRACE("host_capacity " + std::to_string(capacity));
    InfinigenOptions options;
    options.alpha = 2.0;
    options.partial_ratio = 0.5;
    options.max_num_kv = 5;
    options.host_capacity = capacity;
    options.mass_sample_interval = 0;
    Harness a = Make(options);
    KvManagerContext bare = Context();
    bare.host_kv_storage = false;
    auto bm = InfinigenKvManager::Create(bare, options);
    ASSERT_TRUE(bm.ok()) << bm.status();
    ASSERT_TRUE((*bm)->SetSkew(Skew((*bm)->partial_dim())).ok());
    auto b_owner = (*bm)->CreateRankCache(0);
    auto* b = dynamic_cast<InfinigenKvCache*>(b_owner.get());
    ASSERT_NE(b, nullptr);
    const int prompt = 11, steps = 8;
    std::vector<int32_t> ids(prompt, 1);
    for (KvManager* m : {static_cast<KvManager*>(a.manager.get()),
                         static_cast<KvManager*>(bm->get())}) {
      ASSERT_TRUE(m->Admit({4, ids, steps}).ok());
      ASSERT_TRUE(m->Append(4, ids));
    }
    std::mt19937 rng(5);
    Written w;
    w.k.resize(kLayers);
    w.v.resize(kLayers);
    SeqStep step{4, prompt, 0};
    for (int t = 0; t <= steps; ++t) {
      SCOPED_TRACE("step " + std::to_string(t));
      if (t > 0) {
        const int32_t id = 1;
        step = {4, 1, prompt + t - 1};
        ASSERT_TRUE(a.manager->Append(4, absl::MakeConstSpan(&id, 1)));
        ASSERT_TRUE((*bm)->Append(4, absl::MakeConstSpan(&id, 1)));
      }
      ASSERT_TRUE(a.manager->Plan(absl::MakeConstSpan(&step, 1)).ok());
      ASSERT_TRUE((*bm)->Plan(absl::MakeConstSpan(&step, 1)).ok());
      ASSERT_TRUE(a.cache->PrepareStep(absl::MakeConstSpan(&step, 1)).ok());
      ASSERT_TRUE(b->PrepareStep(absl::MakeConstSpan(&step, 1)).ok());
      EXPECT_EQ(b->Pool(0).k, nullptr);  // no host storage
      ASSERT_EQ(a.cache->SpeculationRows().size(), b->SpeculationRows().size());
      std::normal_distribution<float> dist(0.0f, 2.0f);
      for (int l = 0; l < kLayers; ++l) {
        if (l >= 2 && !a.cache->SpeculationRows().empty()) {
          std::vector<std::vector<int32_t>> ca, cb;
          a.cache->SpeculationCandidates(l, 0, &ca);
          b->SpeculationCandidates(l, 0, &cb);
          EXPECT_EQ(ca, cb) << "layer " << l;
          EXPECT_EQ(b->PrefetchSlot(l, 0), a.cache->PrefetchSlot(l, 0));
          // The prefetch region (the GPU engine's working-pool numbering relies on it):
          // block-aligned buffers after the host slots, the layer's parity picking one.
          EXPECT_EQ(b->FirstPrefetchSlot() % kvcache::InfinigenKvManager::kBlockSize, 0);
          EXPECT_EQ(b->PrefetchBufferSlots() % kvcache::InfinigenKvManager::kBlockSize, 0);
          EXPECT_GE(b->PrefetchBufferSlots(), b->SparseMaxNumKv(0));
          EXPECT_EQ(b->PrefetchSlot(l, 0) - b->FirstPrefetchSlot(),
                    (l & 1) * b->PrefetchBufferSlots());
          std::vector<float> pq(kHeads * a.manager->partial_dim());
          for (float& x : pq) x = dist(rng);
          ASSERT_TRUE(a.cache->Speculate(l, pq.data()).ok());
          EXPECT_EQ(b->Speculate(l, pq.data()).code(), absl::StatusCode::kFailedPrecondition);
          const int32_t stride = 5;
          std::vector<int32_t> counts(1, 0), positions(kKvHeads * stride, -1);
          for (int kh = 0; kh < kKvHeads; ++kh) {
            const std::vector<int32_t> sel = a.cache->SelectedPositions(l, 0, kh);
            counts[0] = static_cast<int32_t>(sel.size());
            std::copy(sel.begin(), sel.end(), positions.begin() + kh * stride);
          }
          ASSERT_TRUE(b->RecordSpeculation(l, counts, positions, stride).ok());
          for (int kh = 0; kh < kKvHeads; ++kh) {
            EXPECT_EQ(b->SelectedPositions(l, 0, kh), a.cache->SelectedPositions(l, 0, kh));
          }
        }
        WriteLayer(*a.cache, l, step.num_new_tokens, rng, w);
        const kernels::SeqKvView va = a.cache->SeqViews(l)[0];
        const kernels::SeqKvView vb = b->SeqViews(l)[0];
        ASSERT_EQ(va.num_cached, vb.num_cached) << "layer " << l;
        ASSERT_EQ(va.head_stride, vb.head_stride) << "layer " << l;
        const int lists = va.head_stride > 0 ? kKvHeads : 1;
        const int n = va.head_stride > 0 ? va.head_stride * lists : va.num_cached;
        EXPECT_EQ(std::vector<int32_t>(va.slots, va.slots + n),
                  std::vector<int32_t>(vb.slots, vb.slots + n));
        EXPECT_EQ(std::vector<int32_t>(va.positions, va.positions + n),
                  std::vector<int32_t>(vb.positions, vb.positions + n));
        a.cache->OnAttention(l);
      }
      const KvCounters ca = a.manager->Counters(), cb = (*bm)->Counters();
      EXPECT_EQ(cb.h2d_bytes, ca.h2d_bytes);
      EXPECT_EQ(cb.selections, ca.selections);
      EXPECT_EQ(cb.selected_tokens, ca.selected_tokens);
      EXPECT_EQ(cb.selected_tokens_per_layer, ca.selected_tokens_per_layer);
    }
    EXPECT_GT(a.manager->Counters().selections, 0);
  }
}

TEST(InfinigenSelectionTest, CountAndTopKByHand) {
  // Two heads over 4 tokens: head 0 has 2 within alpha=1 of its max, head 1 has 3.
  const double s[] = {5.0, 4.5, 1.0, 0.0, /**/ 2.0, 1.9, 1.8, -5.0};
  EXPECT_EQ(SpeculatedCount(s, 2, 4, 1.0, 100), 2);  // floor(5 / 2)
  EXPECT_EQ(SpeculatedCount(s, 2, 4, 1.0, 1), 1);
  EXPECT_EQ(SpeculatedCount(s, 2, 4, 0.0, 100), 0);  // strict: nothing above the max
  std::vector<int32_t> top;
  TopKAscending(s, 4, 2, &top);
  EXPECT_EQ(top, (std::vector<int32_t>{0, 1}));
  const double ties[] = {1.0, 3.0, 3.0, 3.0};
  TopKAscending(ties, 4, 2, &top);
  EXPECT_EQ(top, (std::vector<int32_t>{1, 2}));
}

TEST(InfinigenHostPoolTest, CounterEvictionKeepsTheLimit) {
  InfinigenOptions options;
  options.alpha = 1e9;
  options.partial_ratio = 0.5;
  options.max_num_kv = 4;
  options.host_capacity = 0.5;
  Harness r = Make(options);
  const int prompt = 10, steps = 10;  // limit = int(0.5 * 20) = 10
  std::vector<int32_t> ids(prompt, 1);
  ASSERT_TRUE(r.manager->Admit({3, ids, steps}).ok());
  ASSERT_TRUE(r.manager->Append(3, ids));
  std::mt19937 rng(1);
  Written w;
  w.k.resize(kLayers);
  w.v.resize(kLayers);
  SeqStep step{3, prompt, 0};
  ASSERT_TRUE(r.manager->Plan(absl::MakeConstSpan(&step, 1)).ok());
  ASSERT_TRUE(r.cache->PrepareStep(absl::MakeConstSpan(&step, 1)).ok());
  for (int l = 0; l < kLayers; ++l) {
    WriteLayer(*r.cache, l, prompt, rng, w);
    r.cache->OnAttention(l);
  }
  std::set<int> ever_selected_layer2;
  for (int t = 0; t < steps; ++t) {
    const int position = prompt + t;
    int32_t id = 1;
    ASSERT_TRUE(r.manager->Append(3, absl::MakeConstSpan(&id, 1)));
    step = {3, 1, position};
    ASSERT_TRUE(r.manager->Plan(absl::MakeConstSpan(&step, 1)).ok());
    ASSERT_TRUE(r.cache->PrepareStep(absl::MakeConstSpan(&step, 1)).ok());
    for (int l = 0; l < kLayers; ++l) {
      std::vector<float> pq(kHeads * r.manager->partial_dim(), 1.0f);
      if (l >= 2) {
        ASSERT_TRUE(r.cache->Speculate(l, pq.data()).ok());
      }
      WriteLayer(*r.cache, l, 1, rng, w);
      r.cache->OnAttention(l);
    }
    // Candidates = live earlier tokens: at most limit - 1 (the new token is live too).
    const auto sel = r.cache->SelectedPositions(2, 0, 0);
    EXPECT_LE(static_cast<int>(sel.size()), 4);
  }
  // Host bytes count live tokens: layers 0-1 full (20 tokens), layers 2-3 at the limit (10).
  const int64_t head_bytes = 2 * kDim * 4;
  EXPECT_EQ(r.manager->Usage().host_bytes, (2 * kKvHeads * 20 + 2 * kKvHeads * 10) * head_bytes);
}

TEST(InfinigenParamsTest, BudgetMapsAndBadValuesAreRefused) {
  const KvManagerContext ctx = Context();
  auto m = CreateKvManager("infinigen", {{"kv_budget", "0.3"}}, ctx);
  ASSERT_TRUE(m.ok()) << m.status();
  auto* ig = dynamic_cast<InfinigenKvManager*>(m->get());
  ASSERT_NE(ig, nullptr);
  EXPECT_EQ(ig->MaxNumKv(80, 20), 30);
  m = CreateKvManager("infinigen", {{"kv_budget", "0.3"}, {"max_kv_ratio", "0.1"}}, ctx);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(dynamic_cast<InfinigenKvManager*>(m->get())->MaxNumKv(80, 20), 10);
  m = CreateKvManager("infinigen", {{"kv_budget", "0.3"}, {"max_num_kv", "7"}}, ctx);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(dynamic_cast<InfinigenKvManager*>(m->get())->MaxNumKv(80, 20), 7);

  const std::vector<std::pair<std::map<std::string, std::string>, std::string>> bad = {
      {{{"alpha", "-0.5"}}, "alpha"},
      {{{"alpha", "-1"}}, "alpha"},
      {{{"partial_ratio", "1.5"}}, "partial_ratio"},
      {{{"partial_ratio", "0.05"}}, "partial_ratio"},  // int(8 * 0.05) = 0 columns
      {{{"max_kv_ratio", "-0.1"}}, "max_kv_ratio"},
      {{{"max_kv_ratio", "0"}}, "zero tokens"},
      {{{"max_num_kv", "0"}}, "zero tokens"},
      {{{"kv_budget", "0"}}, "kv_budget"},
      {{{"kv_budget", "1.5"}}, "kv_budget"},
      {{{"host_capacity", "0"}}, "host_capacity"},
  };
  for (const auto& [params, what] : bad) {
    auto r = CreateKvManager("infinigen", params, ctx);
    ASSERT_FALSE(r.ok()) << params.begin()->first << "=" << params.begin()->second;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(what));
  }
  // A ratio that rounds to zero tokens for a short request is refused at admission.
  m = CreateKvManager("infinigen", {{"max_kv_ratio", "0.01"}}, ctx);
  ASSERT_TRUE(m.ok());
  std::vector<int32_t> ids(10, 1);
  const Admission a = (*m)->CanAdmit({1, ids, 5});
  EXPECT_EQ(a.status, AdmitStatus::kNever);
  EXPECT_THAT(a.reason, HasSubstr("zero tokens"));
}

TEST(InfinigenParamsTest, StepWithoutSkewIsRefused) {
  auto m = InfinigenKvManager::Create(Context(), InfinigenOptions{});
  ASSERT_TRUE(m.ok());
  auto cache = (*m)->CreateRankCache(0);
  std::vector<int32_t> ids(4, 1);
  ASSERT_TRUE((*m)->Admit({1, ids, 2}).ok());
  ASSERT_TRUE((*m)->Append(1, ids));
  const SeqStep step{1, 4, 0};
  ASSERT_TRUE((*m)->Plan(absl::MakeConstSpan(&step, 1)).ok());
  const absl::Status s = cache->PrepareStep(absl::MakeConstSpan(&step, 1));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace kvscope::kvcache
