// Tests for engine/presets: the shapes give the published parameter counts.
#include "engine/presets.h"

#include <set>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvscope::engine {
namespace {

using ::testing::HasSubstr;

TEST(PresetsTest, ParameterCountsMatchPublishedSizes) {
  const std::pair<const char*, double> kPublished[] = {
      {"llama-2-7b", 6.74e9},    {"llama-2-13b", 13.02e9}, {"llama-2-70b", 68.98e9},
      {"llama-3-8b", 8.03e9},    {"llama-3-70b", 70.55e9}, {"llama-3.1-8b", 8.03e9},
      {"llama-3.2-1b", 1.236e9}, {"mistral-7b", 7.24e9},   {"qwen2-7b", 7.62e9},
      {"qwen2-0.5b", 0.494e9},   {"opt-125m", 125.2e6},    {"opt-350m", 331.2e6},
      {"opt-1.3b", 1.316e9},     {"opt-6.7b", 6.66e9},     {"opt-13b", 12.85e9},
      {"opt-30b", 29.97e9}};
  for (const auto& [name, published] : kPublished) {
    absl::StatusOr<ModelConfig> c = PresetConfig(name);
    ASSERT_TRUE(c.ok()) << c.status();
    const double n = static_cast<double>(c->NumParameters());
    EXPECT_NEAR(n / published, 1.0, 0.02) << name << ": " << n;
  }
  absl::StatusOr<ModelConfig> m = PresetConfig("llama-100m");
  ASSERT_TRUE(m.ok());
  EXPECT_GE(m->NumParameters(), 80'000'000);
  EXPECT_LE(m->NumParameters(), 120'000'000);
  for (const char* tiny : {"llama-tiny", "opt-tiny"}) {
    absl::StatusOr<ModelConfig> t = PresetConfig(tiny);
    ASSERT_TRUE(t.ok());
    EXPECT_GE(t->NumParameters(), 500'000) << tiny;
    EXPECT_LE(t->NumParameters(), 3'000'000) << tiny;
  }
}

TEST(PresetsTest, EveryPresetIsConsistent) {
  std::set<std::string> names;
  for (const Preset& p : AllPresets()) {
    SCOPED_TRACE(p.name);
    EXPECT_TRUE(names.insert(p.name).second) << "duplicate";
    EXPECT_FALSE(p.description.empty());
    const ModelConfig& c = p.config;
    EXPECT_GT(c.vocab_size, 0);
    EXPECT_EQ(c.num_heads % c.num_kv_heads, 0);
    EXPECT_EQ(c.head_dim * c.num_heads, c.hidden_size);
    EXPECT_GT(c.max_position_embeddings, 0);
    EXPECT_GE(c.bos_token_id, 0);
    EXPECT_FALSE(c.eos_token_ids.empty());
    if (c.family == ModelFamily::kLlama) {
      EXPECT_EQ(RopeRotaryDim(c), c.head_dim);
      EXPECT_EQ(RopeInvFreq(c, nullptr).size(), static_cast<size_t>(c.head_dim / 2));
      EXPECT_FALSE(c.o_bias);
    } else {
      EXPECT_EQ(c.architecture, "OPTForCausalLM");
      EXPECT_EQ(c.num_kv_heads, c.num_heads);
      EXPECT_TRUE(c.tie_word_embeddings);
      EXPECT_EQ(c.position_offset, 2);
    }
  }
  EXPECT_GE(names.size(), 19u);
}

TEST(PresetsTest, SpecificShapes) {
  absl::StatusOr<ModelConfig> c = PresetConfig("llama-3.1-8b");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->rope.type, RopeType::kLlama3);
  EXPECT_EQ(c->rope.factor, 8.0);
  EXPECT_EQ(c->rope.original_max_position_embeddings, 8192);
  EXPECT_EQ(c->max_position_embeddings, 131072);
  c = PresetConfig("llama-3.2-1b");
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->rope.factor, 32.0);
  EXPECT_EQ(c->head_dim, 64);
  c = PresetConfig("qwen2-7b");
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->qkv_bias);
  EXPECT_EQ(c->rope.theta, 1e6);
  EXPECT_EQ(c->num_kv_heads, 4);
  c = PresetConfig("opt-350m");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->word_embed_proj_dim, 512);
  EXPECT_EQ(c->hidden_size, 1024);
  c = PresetConfig("llama-2-70b");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->num_kv_heads, 8);
  c = PresetConfig("llama-tiny");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->hidden_size, 128);
  EXPECT_EQ(c->num_layers, 4);
  EXPECT_EQ(c->num_kv_heads, 4);
}

TEST(PresetsTest, UnknownNameListsPresets) {
  absl::StatusOr<ModelConfig> c = PresetConfig("llama-9000");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr("llama-9000"));
  EXPECT_THAT(c.status().message(), HasSubstr("llama-2-7b"));
  EXPECT_THAT(c.status().message(), HasSubstr("opt-tiny"));
}

}  // namespace
}  // namespace kvscope::engine
