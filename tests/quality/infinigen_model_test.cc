// infinigen (model side): the calibrated skewing matrices are orthogonal and keep q·kᵀ; with
// a huge alpha and max_num_kv >= the sequence, every layer selects every token and the
// logits equal the full cache's (Llama family with GQA and tensor parallelism, OPT with the
// skew folded into the weights); a tight budget does change them.
#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/infinigen_calibration.h"
#include "engine/presets.h"
#include "engine/quality.h"
#include "engine/weights.h"
#include "gtest/gtest.h"
#include "kvcache/infinigen_kv_cache.h"
#include "kvcache/registry.h"
#include "tests/test_util.h"

namespace kvscope::engine {
namespace {

std::shared_ptr<const ModelWeights> Synthetic(const std::string& preset, uint64_t seed) {
  auto config = PresetConfig(preset);
  EXPECT_TRUE(config.ok()) << config.status();
  if (!config.ok()) return nullptr;
  auto weights = SyntheticWeights(*config, seed);
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (!weights.ok()) return nullptr;
  return std::make_shared<ModelWeights>(std::move(*weights));
}

TEST(InfinigenSkewTest, OrthogonalAndKeepsScores) {
  for (const char* preset : {"llama-tiny", "opt-tiny"}) {
    auto w = Synthetic(preset, 5);
    ASSERT_NE(w, nullptr);
    const ModelConfig& c = w->config;
    const int32_t d = static_cast<int32_t>(c.head_dim);
    const int32_t pd = std::max<int32_t>(1, d / 5);
    auto skew = CalibrateInfinigen(*w, CalibrationPrompt(c, 48, 1), pd);
    ASSERT_TRUE(skew.ok()) << skew.status();
    EXPECT_EQ(skew->default_alpha, c.family == ModelFamily::kOpt ? 4.0 : 5.0);
    std::mt19937 rng(3);
    std::normal_distribution<double> dist;
    for (int32_t l = 0; l < skew->num_layers; ++l) {
      for (int32_t h = 0; h < skew->num_kv_heads; ++h) {
        const float* a = skew->A(l, h);
        for (int32_t i = 0; i < d; ++i) {
          for (int32_t j = 0; j < d; ++j) {
            double dot = 0;  // (AᵀA)[i][j]
            for (int32_t r = 0; r < d; ++r) dot += static_cast<double>(a[r * d + i]) * a[r * d + j];
            EXPECT_NEAR(dot, i == j ? 1.0 : 0.0, 1e-5) << preset << " layer " << l;
          }
        }
        std::vector<double> q(d), k(d), qa(d, 0.0), ka(d, 0.0);
        for (int32_t i = 0; i < d; ++i) {
          q[i] = dist(rng);
          k[i] = dist(rng);
        }
        double qk = 0, qk_skewed = 0;
        for (int32_t i = 0; i < d; ++i) {
          qk += q[i] * k[i];
          for (int32_t j = 0; j < d; ++j) {
            qa[j] += q[i] * a[i * d + j];
            ka[j] += k[i] * a[i * d + j];
          }
        }
        for (int32_t j = 0; j < d; ++j) qk_skewed += qa[j] * ka[j];
        EXPECT_NEAR(qk_skewed, qk, 1e-5 * std::max(1.0, std::abs(qk))) << preset;
        const int32_t* cols = skew->Columns(l, h);
        for (int32_t c2 = 0; c2 < pd; ++c2) {
          EXPECT_GE(cols[c2], 0);
          EXPECT_LT(cols[c2], d);
          if (c2 > 0) {
            EXPECT_LT(cols[c2 - 1], cols[c2]);
          }
        }
      }
    }
  }
}

// Logits of the prompt's last token and of each forced token, one step at a time.
absl::StatusOr<std::vector<std::vector<float>>> Decode(std::shared_ptr<const ModelWeights> w,
                                                       kvcache::KvManager* manager, int tp,
                                                       const std::vector<int32_t>& prompt,
                                                       const std::vector<int32_t>& forced) {
  EngineOptions options;
  options.tp_size = tp;
  options.num_threads = 2;
  if (manager != nullptr) {
    options.kv_factory = [manager](const kvcache::KvShape&, int rank) {
      return manager->CreateRankCache(rank);
    };
  }
  auto engine = Engine::Create(w, options);
  if (!engine.ok()) return engine.status();
  const int64_t id = 1;
  if (manager != nullptr) {
    auto admitted = manager->Admit({id, prompt, static_cast<int32_t>(forced.size())});
    if (!admitted.ok()) return admitted.status();
  }
  std::vector<std::vector<float>> rows;
  int32_t position = 0;
  auto step = [&](absl::Span<const int32_t> tokens) -> absl::Status {
    if (manager != nullptr) {
      if (!manager->Append(id, tokens)) return absl::ResourceExhaustedError("append");
      const kvcache::SeqStep s{id, static_cast<int32_t>(tokens.size()), position};
      auto plan = manager->Plan(absl::MakeConstSpan(&s, 1));
      if (!plan.ok()) return plan.status();
    }
    const SeqInput input{id, tokens, position, false};
    auto out = (*engine)->Forward(absl::MakeConstSpan(&input, 1));
    if (!out.ok()) return out.status();
    const float* row = out->Row(out->row_begin[1] - 1);
    rows.emplace_back(row, row + out->vocab_size);
    position += static_cast<int32_t>(tokens.size());
    return absl::OkStatus();
  };
  absl::Status s = step(prompt);
  for (size_t i = 0; s.ok() && i < forced.size(); ++i) s = step(absl::MakeConstSpan(&forced[i], 1));
  if (!s.ok()) return s;
  return rows;
}

std::vector<int32_t> Ids(int n, int64_t vocab, int salt) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 37 + 11 + salt * 101) % vocab);
  return ids;
}

double MaxAbsDiff(const std::vector<std::vector<float>>& a,
                  const std::vector<std::vector<float>>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    for (size_t j = 0; j < a[i].size(); ++j) m = std::max(m, std::abs(double{a[i][j]} - b[i][j]));
  }
  return m;
}

struct Case {
  const char* preset;
  int tp;
};

// A calibration text given through the context (kvscope bench --calibration-text) is what
// the skewing is calibrated on; without one, the seeded random prompt is.
TEST(InfinigenModelTest, CalibrationTextFromTheContextIsUsed) {
  auto w = Synthetic("llama-tiny", 7);
  ASSERT_NE(w, nullptr);
  const auto text = std::make_shared<const std::vector<int32_t>>(Ids(40, w->config.vocab_size, 9));
  auto skew_of = [&](std::shared_ptr<const std::vector<int32_t>> ids) {
    kvcache::KvManagerContext ctx{KvGeometryFor(w->config, 1), 16LL << 20,
                                  w->config.max_position_embeddings};
    ctx.calibration_ids = std::move(ids);
    auto m = kvcache::CreateKvManager("infinigen", {{"calibration_tokens", "32"}}, ctx);
    EXPECT_TRUE(m.ok()) << m.status();
    std::unique_ptr<kvcache::KvCache> cache = (*m)->CreateRankCache(0);
    EXPECT_TRUE(PrepareInfinigen(*w, *cache).ok());
    auto* ig = dynamic_cast<kvcache::InfinigenKvCache*>(cache.get());
    EXPECT_NE(ig, nullptr);
    EXPECT_NE(ig->skew(), nullptr);
    return ig->skew()->a;
  };
  auto direct = CalibrateInfinigen(*w, *text, static_cast<int32_t>(0.2 * w->config.head_dim));
  ASSERT_TRUE(direct.ok()) << direct.status();
  const std::vector<float> from_text = skew_of(text);
  EXPECT_EQ(from_text, direct->a);
  EXPECT_NE(skew_of(nullptr), from_text);
}

TEST(InfinigenModelTest, HugeAlphaAndFullBudgetEqualFullCache) {
  for (const Case& c : {Case{"llama-tiny", 1}, Case{"llama-tiny", 2}, Case{"opt-tiny", 1}}) {
    auto w = Synthetic(c.preset, 7);
    ASSERT_NE(w, nullptr);
    const auto prompt = Ids(20, w->config.vocab_size, 1);
    const auto forced = Ids(10, w->config.vocab_size, 2);
    auto full = Decode(w, nullptr, c.tp, prompt, forced);
    ASSERT_TRUE(full.ok()) << full.status();
    const kvcache::KvManagerContext ctx{KvGeometryFor(w->config, c.tp), 16LL << 20,
                                        w->config.max_position_embeddings};
    auto m = kvcache::CreateKvManager(
        "infinigen", {{"alpha", "1e6"}, {"max_kv_ratio", "1"}, {"calibration_tokens", "32"}}, ctx);
    ASSERT_TRUE(m.ok()) << m.status();
    auto ig = Decode(w, m->get(), c.tp, prompt, forced);
    ASSERT_TRUE(ig.ok()) << ig.status();
    EXPECT_LE(MaxAbsDiff(*full, *ig), 1e-5) << c.preset << " tp " << c.tp;
    // Every sparse layer selected every earlier token at every decode step.
    const kvcache::KvCounters counters = (*m)->Counters();
    const int64_t sparse = w->config.num_layers - 2;
    EXPECT_EQ(counters.selections, sparse * static_cast<int64_t>(forced.size()));
    int64_t all = 0;
    for (size_t t = 0; t < forced.size(); ++t) all += sparse * (prompt.size() + t);
    EXPECT_EQ(counters.selected_tokens, all);
    EXPECT_GT(counters.h2d_bytes, 0);

    // A tight budget drops tokens: the logits move.
    auto tight = kvcache::CreateKvManager("infinigen",
                                          {{"max_num_kv", "2"}, {"calibration_tokens", "32"}}, ctx);
    ASSERT_TRUE(tight.ok()) << tight.status();
    auto lossy = Decode(w, tight->get(), c.tp, prompt, forced);
    ASSERT_TRUE(lossy.ok()) << lossy.status();
    EXPECT_GT(MaxAbsDiff(*full, *lossy), 1e-4) << c.preset;
  }
}

TEST(InfinigenModelTest, TeacherForcedQualityAndTinyStories) {
  auto w = Synthetic("llama-tiny", 9);
  ASSERT_NE(w, nullptr);
  const kvcache::KvManagerContext ctx{KvGeometryFor(w->config, 1), 16LL << 20,
                                      w->config.max_position_embeddings};
  const auto prompt = Ids(48, w->config.vocab_size, 3);
  auto q = EvaluateTeacherForced(w, "infinigen", {{"kv_budget", "0.1"}}, ctx, prompt, 8, 2);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_GT(q->mean_kl, 0.0);
  EXPECT_TRUE(std::isfinite(q->mean_kl));

  // The 2-layer TinyStories model: with dense_layers=1, layer 1 is selected from layer 0.
  const std::string dir = ::kvscope::testing::SharedPath("models/tinystories-656k");
  if (dir.empty()) GTEST_SKIP() << "needs " << ::kvscope::testing::SharedDir();
  auto loaded = LoadModelWeights(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  auto ts = std::make_shared<ModelWeights>(std::move(*loaded));
  const kvcache::KvManagerContext ts_ctx{KvGeometryFor(ts->config, 1), 16LL << 20,
                                         ts->config.max_position_embeddings};
  const auto ts_prompt = Ids(40, ts->config.vocab_size, 4);
  auto lossless = EvaluateTeacherForced(
      ts, "infinigen", {{"dense_layers", "1"}, {"alpha", "1e6"}, {"max_kv_ratio", "1"}}, ts_ctx,
      ts_prompt, 8, 2);
  ASSERT_TRUE(lossless.ok()) << lossless.status();
  EXPECT_LT(lossless->mean_kl, 1e-9);
  EXPECT_EQ(lossless->top1_agreement, 1.0);
  auto lossy = EvaluateTeacherForced(ts, "infinigen", {{"dense_layers", "1"}, {"max_num_kv", "2"}},
                                     ts_ctx, ts_prompt, 8, 2);
  ASSERT_TRUE(lossy.ok()) << lossy.status();
  EXPECT_GT(lossy->mean_kl, 1e-6);
}

}  // namespace
}  // namespace kvscope::engine
