// Tests for engine/model_config: config.json parsing (fixtures, both RoPE layouts, errors)
// and the RoPE frequency tables.
#include "engine/model_config.h"

#include <cmath>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/model_io/model_io_test_helpers.h"
#include "tests/test_util.h"

namespace kvscope::engine {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::json;

constexpr char kFixtures[] = "fixtures/hf-reference/";

// A minimal valid Llama config, to be edited by the error tests.
json BaseLlama() {
  return json{{"architectures", {"LlamaForCausalLM"}},
              {"vocab_size", 1000},
              {"hidden_size", 64},
              {"intermediate_size", 128},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 4},
              {"num_key_value_heads", 2},
              {"max_position_embeddings", 256},
              {"rms_norm_eps", 1e-6},
              {"rope_theta", 10000.0}};
}

absl::StatusOr<ModelConfig> Parse(const json& j) {
  return ParseModelConfig(j.dump(), "/models/x/config.json");
}

void ExpectSameConfig(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.architecture, b.architecture);
  EXPECT_EQ(a.family, b.family);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.norm_eps, b.norm_eps);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.qkv_bias, b.qkv_bias);
  EXPECT_EQ(a.o_bias, b.o_bias);
  EXPECT_EQ(a.mlp_bias, b.mlp_bias);
  EXPECT_EQ(a.rope.type, b.rope.type);
  EXPECT_EQ(a.rope.theta, b.rope.theta);
  EXPECT_EQ(a.rope.factor, b.rope.factor);
  EXPECT_EQ(a.rope.low_freq_factor, b.rope.low_freq_factor);
  EXPECT_EQ(a.rope.high_freq_factor, b.rope.high_freq_factor);
  EXPECT_EQ(a.rope.original_max_position_embeddings, b.rope.original_max_position_embeddings);
  EXPECT_EQ(a.rope.partial_rotary_factor, b.rope.partial_rotary_factor);
  EXPECT_EQ(a.word_embed_proj_dim, b.word_embed_proj_dim);
  EXPECT_EQ(a.position_offset, b.position_offset);
  EXPECT_EQ(a.do_layer_norm_before, b.do_layer_norm_before);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
  EXPECT_EQ(a.torch_dtype, b.torch_dtype);
}

// ---- Fixtures ----------------------------------------------------------------------------

TEST(ModelConfigFixtureTest, LlamaGqa) {
  for (const char* dtype : {"fp32", "bf16"}) {
    KVSCOPE_REQUIRE_SHARED(dir, std::string(kFixtures) + "llama-gqa/" + dtype);
    absl::StatusOr<ModelConfig> c = LoadModelConfig(dir);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->architecture, "LlamaForCausalLM");
    EXPECT_EQ(c->family, ModelFamily::kLlama);
    EXPECT_EQ(c->vocab_size, 512);
    EXPECT_EQ(c->hidden_size, 128);
    EXPECT_EQ(c->intermediate_size, 344);
    EXPECT_EQ(c->num_layers, 2);
    EXPECT_EQ(c->num_heads, 8);
    EXPECT_EQ(c->num_kv_heads, 2);
    EXPECT_EQ(c->head_dim, 16);
    EXPECT_EQ(c->q_size(), 128);
    EXPECT_EQ(c->kv_size(), 32);
    EXPECT_EQ(c->max_position_embeddings, 1024);
    EXPECT_DOUBLE_EQ(c->norm_eps, 1e-5);
    EXPECT_FALSE(c->tie_word_embeddings);
    EXPECT_FALSE(c->qkv_bias);
    EXPECT_FALSE(c->o_bias);
    EXPECT_FALSE(c->mlp_bias);
    EXPECT_EQ(c->rope.type, RopeType::kDefault);
    EXPECT_EQ(c->rope.theta, 10000.0);
    EXPECT_EQ(c->bos_token_id, 1);
    EXPECT_TRUE(c->eos_token_ids.empty());
    EXPECT_EQ(c->torch_dtype, std::string(dtype) == "fp32" ? "float32" : "bfloat16");
    EXPECT_EQ(RopeRotaryDim(*c), 16);
  }
}

TEST(ModelConfigFixtureTest, Llama3Rope) {
  for (const char* dtype : {"fp32", "bf16", "fp32-v4-config"}) {
    KVSCOPE_REQUIRE_SHARED(dir, std::string(kFixtures) + "llama3-rope/" + dtype);
    absl::StatusOr<ModelConfig> c = LoadModelConfig(dir);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->hidden_size, 128);
    EXPECT_EQ(c->intermediate_size, 256);
    EXPECT_EQ(c->num_heads, 4);
    EXPECT_EQ(c->num_kv_heads, 1);
    EXPECT_EQ(c->head_dim, 32);
    EXPECT_EQ(c->max_position_embeddings, 2048);
    EXPECT_TRUE(c->tie_word_embeddings);
    EXPECT_EQ(c->rope.type, RopeType::kLlama3);
    EXPECT_EQ(c->rope.theta, 500000.0);
    EXPECT_EQ(c->rope.factor, 8.0);
    EXPECT_EQ(c->rope.low_freq_factor, 1.0);
    EXPECT_EQ(c->rope.high_freq_factor, 4.0);
    EXPECT_EQ(c->rope.original_max_position_embeddings, 32);
  }
}

TEST(ModelConfigFixtureTest, Llama3RopeV4AndV5LayoutsAreIdentical) {
  KVSCOPE_REQUIRE_SHARED(v5, std::string(kFixtures) + "llama3-rope/fp32");
  KVSCOPE_REQUIRE_SHARED(v4, std::string(kFixtures) + "llama3-rope/fp32-v4-config");
  absl::StatusOr<ModelConfig> a = LoadModelConfig(v5);
  absl::StatusOr<ModelConfig> b = LoadModelConfig(v4);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ExpectSameConfig(*a, *b);
  float sa = 0, sb = 0;
  const std::vector<float> fa = RopeInvFreq(*a, &sa);
  const std::vector<float> fb = RopeInvFreq(*b, &sb);
  ASSERT_EQ(fa.size(), 16u);
  EXPECT_EQ(fa, fb);
  EXPECT_EQ(sa, 1.0f);
  EXPECT_EQ(sb, 1.0f);
}

TEST(ModelConfigFixtureTest, Qwen2Bias) {
  for (const char* dtype : {"fp32", "bf16"}) {
    KVSCOPE_REQUIRE_SHARED(dir, std::string(kFixtures) + "qwen2-bias/" + dtype);
    absl::StatusOr<ModelConfig> c = LoadModelConfig(dir);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->architecture, "Qwen2ForCausalLM");
    EXPECT_EQ(c->family, ModelFamily::kLlama);
    EXPECT_EQ(c->hidden_size, 96);
    EXPECT_EQ(c->num_heads, 6);
    EXPECT_EQ(c->num_kv_heads, 2);
    EXPECT_EQ(c->head_dim, 16);
    EXPECT_EQ(c->intermediate_size, 256);
    EXPECT_DOUBLE_EQ(c->norm_eps, 1e-6);
    EXPECT_TRUE(c->tie_word_embeddings);
    EXPECT_TRUE(c->qkv_bias);
    EXPECT_FALSE(c->o_bias);
    EXPECT_FALSE(c->mlp_bias);
    EXPECT_EQ(c->rope.type, RopeType::kDefault);
    EXPECT_EQ(c->rope.theta, 1000000.0);
    EXPECT_EQ(c->bos_token_id, -1);
  }
}

TEST(ModelConfigFixtureTest, Opt) {
  for (const char* dtype : {"fp32", "bf16"}) {
    KVSCOPE_REQUIRE_SHARED(dir, std::string(kFixtures) + "opt/" + dtype);
    absl::StatusOr<ModelConfig> c = LoadModelConfig(dir);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->architecture, "OPTForCausalLM");
    EXPECT_EQ(c->family, ModelFamily::kOpt);
    EXPECT_EQ(c->vocab_size, 512);
    EXPECT_EQ(c->hidden_size, 128);
    EXPECT_EQ(c->intermediate_size, 512);
    EXPECT_EQ(c->num_layers, 2);
    EXPECT_EQ(c->num_heads, 4);
    EXPECT_EQ(c->num_kv_heads, 4);
    EXPECT_EQ(c->head_dim, 32);
    EXPECT_EQ(c->max_position_embeddings, 1024);
    EXPECT_EQ(c->word_embed_proj_dim, 128);
    EXPECT_EQ(c->position_offset, 2);
    EXPECT_TRUE(c->do_layer_norm_before);
    EXPECT_DOUBLE_EQ(c->norm_eps, 1e-5);
    EXPECT_TRUE(c->tie_word_embeddings);
    EXPECT_TRUE(c->qkv_bias);
    EXPECT_TRUE(c->o_bias);
    EXPECT_TRUE(c->mlp_bias);
    EXPECT_EQ(c->bos_token_id, 2);
    EXPECT_EQ(RopeRotaryDim(*c), 0);
    EXPECT_TRUE(RopeInvFreq(*c, nullptr).empty());
  }
}

TEST(ModelConfigFixtureTest, TinyStoriesV4Layout) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  absl::StatusOr<ModelConfig> c = LoadModelConfig(dir);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vocab_size, 2048);
  EXPECT_EQ(c->num_heads, 8);
  EXPECT_EQ(c->num_kv_heads, 4);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->rope.type, RopeType::kDefault);  // "rope_scaling": null
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->eos_token_ids, std::vector<int32_t>{2});
  EXPECT_EQ(c->torch_dtype, "float32");
}

// ---- Field handling ----------------------------------------------------------------------

TEST(ModelConfigTest, DefaultsForOptionalFields) {
  json j = BaseLlama();
  j.erase("num_key_value_heads");
  j.erase("rms_norm_eps");
  j.erase("rope_theta");
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 4);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_DOUBLE_EQ(c->norm_eps, 1e-6);
  EXPECT_EQ(c->rope.theta, 10000.0);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_id, -1);
}

TEST(ModelConfigTest, ExplicitHeadDimNeedNotDivideHidden) {
  json j = BaseLlama();
  j["hidden_size"] = 60;  // 60 / 4 would be 15; head_dim given explicitly
  j["head_dim"] = 32;
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 32);
  EXPECT_EQ(c->q_size(), 128);
}

TEST(ModelConfigTest, LlamaBiases) {
  json j = BaseLlama();
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->qkv_bias);
  EXPECT_TRUE(c->o_bias);
  EXPECT_TRUE(c->mlp_bias);
}

TEST(ModelConfigTest, OptWithoutBiasAndProjection) {
  json j = {{"architectures", {"OPTForCausalLM"}},
            {"vocab_size", 100},
            {"hidden_size", 64},
            {"ffn_dim", 256},
            {"num_hidden_layers", 2},
            {"num_attention_heads", 4},
            {"max_position_embeddings", 128},
            {"word_embed_proj_dim", 32},
            {"enable_bias", false}};
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->word_embed_proj_dim, 32);
  EXPECT_FALSE(c->qkv_bias);
  EXPECT_FALSE(c->o_bias);
  EXPECT_FALSE(c->mlp_bias);
  EXPECT_TRUE(c->tie_word_embeddings);  // OPTConfig default
}

TEST(ModelConfigTest, MistralAndQwen2Defaults) {
  json j = BaseLlama();
  j["architectures"] = {"MistralForCausalLM"};
  j["attention_bias"] = true;  // not an option of Mistral; ignored
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->qkv_bias);
  EXPECT_FALSE(c->tie_word_embeddings);
  j["architectures"] = {"Qwen2ForCausalLM"};
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->qkv_bias);
  EXPECT_FALSE(c->o_bias);
}

TEST(ModelConfigTest, TokenIdsIntListOrNull) {
  json j = BaseLlama();
  j["bos_token_id"] = 128000;
  j["eos_token_id"] = {128001, 128008, 128009};
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->bos_token_id, 128000);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{128001, 128008, 128009}));
  j["eos_token_id"] = 7;
  j["bos_token_id"] = nullptr;
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_EQ(c->eos_token_ids, std::vector<int32_t>{7});
  j["eos_token_id"] = "x";
  c = Parse(j);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("eos_token_id"));
}

TEST(ModelConfigTest, RopeLayouts) {
  // 4.x "type" key, linear.
  json j = BaseLlama();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope.type, RopeType::kLinear);
  EXPECT_EQ(c->rope.factor, 2.0);
  // 4.x rope_scaling with rope_type "default".
  j["rope_scaling"] = {{"rope_type", "default"}};
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope.type, RopeType::kDefault);
  // 5.x rope_parameters, theta inside; partial rotary factor inside.
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "linear"},
                          {"rope_theta", 5e5},
                          {"factor", 4.0},
                          {"partial_rotary_factor", 0.5}};
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope.type, RopeType::kLinear);
  EXPECT_EQ(c->rope.theta, 5e5);
  EXPECT_EQ(c->rope.factor, 4.0);
  EXPECT_EQ(c->rope.partial_rotary_factor, 0.5);
  EXPECT_EQ(RopeRotaryDim(*c), 8);
  EXPECT_EQ(RopeInvFreq(*c, nullptr).size(), 4u);
  // Top-level partial_rotary_factor (4.x style).
  j.erase("rope_parameters");
  j["partial_rotary_factor"] = 0.25;
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(RopeRotaryDim(*c), 4);
}

// ---- Errors ------------------------------------------------------------------------------

struct ErrorCase {
  std::string name;
  json config;
  absl::StatusCode code;
  std::vector<std::string> substrings;  // all must appear in the message
};

std::vector<ErrorCase> ErrorCases() {
  std::vector<ErrorCase> cases;
  auto with = [](const char* key, json value) {
    json j = BaseLlama();
    if (value.is_discarded()) {
      j.erase(key);
    } else {
      j[key] = std::move(value);
    }
    return j;
  };
  const json kErase = json(json::value_t::discarded);
  cases.push_back({"missing_hidden",
                   with("hidden_size", kErase),
                   absl::StatusCode::kInvalidArgument,
                   {"hidden_size", "missing"}});
  cases.push_back({"string_hidden",
                   with("hidden_size", "64"),
                   absl::StatusCode::kInvalidArgument,
                   {"hidden_size", "positive integer"}});
  cases.push_back({"float_layers",
                   with("num_hidden_layers", 2.5),
                   absl::StatusCode::kInvalidArgument,
                   {"num_hidden_layers"}});
  cases.push_back({"zero_vocab",
                   with("vocab_size", 0),
                   absl::StatusCode::kInvalidArgument,
                   {"vocab_size", "positive"}});
  cases.push_back({"negative_heads",
                   with("num_attention_heads", -4),
                   absl::StatusCode::kInvalidArgument,
                   {"num_attention_heads"}});
  cases.push_back({"huge_hidden",
                   with("hidden_size", json(uint64_t{1} << 63)),
                   absl::StatusCode::kInvalidArgument,
                   {"hidden_size"}});
  cases.push_back({"heads_not_dividing_hidden",
                   with("num_attention_heads", 5),
                   absl::StatusCode::kInvalidArgument,
                   {"hidden_size", "num_attention_heads"}});
  cases.push_back({"kv_not_dividing_heads",
                   with("num_key_value_heads", 3),
                   absl::StatusCode::kInvalidArgument,
                   {"num_key_value_heads"}});
  cases.push_back({"bool_as_string",
                   with("tie_word_embeddings", "yes"),
                   absl::StatusCode::kInvalidArgument,
                   {"tie_word_embeddings", "true or false"}});
  cases.push_back({"eps_negative",
                   with("rms_norm_eps", -1.0),
                   absl::StatusCode::kInvalidArgument,
                   {"rms_norm_eps"}});
  cases.push_back({"unsupported_arch",
                   with("architectures", json{"GPT2LMHeadModel"}),
                   absl::StatusCode::kUnimplemented,
                   {"GPT2LMHeadModel", "LlamaForCausalLM", "OPTForCausalLM"}});
  cases.push_back({"arch_not_list",
                   with("architectures", 5),
                   absl::StatusCode::kInvalidArgument,
                   {"architectures"}});
  cases.push_back({"gelu",
                   with("hidden_act", "gelu"),
                   absl::StatusCode::kUnimplemented,
                   {"hidden_act", "gelu", "silu"}});
  cases.push_back({"yarn",
                   with("rope_scaling", json{{"rope_type", "yarn"}, {"factor", 4.0}}),
                   absl::StatusCode::kUnimplemented,
                   {"yarn", "default, linear, llama3"}});
  cases.push_back({"dynamic_v5",
                   with("rope_parameters", json{{"rope_type", "dynamic"}, {"rope_theta", 1e4}}),
                   absl::StatusCode::kUnimplemented,
                   {"rope_parameters.rope_type", "dynamic"}});
  cases.push_back({"longrope_type_key",
                   with("rope_scaling", json{{"type", "longrope"}}),
                   absl::StatusCode::kUnimplemented,
                   {"longrope", "llama3"}});
  cases.push_back({"linear_without_factor",
                   with("rope_scaling", json{{"rope_type", "linear"}}),
                   absl::StatusCode::kInvalidArgument,
                   {"rope_scaling.factor"}});
  cases.push_back({"llama3_missing_orig",
                   with("rope_scaling", json{{"rope_type", "llama3"},
                                             {"factor", 8.0},
                                             {"low_freq_factor", 1.0},
                                             {"high_freq_factor", 4.0}}),
                   absl::StatusCode::kInvalidArgument,
                   {"rope_scaling.original_max_position_embeddings"}});
  cases.push_back({"rope_scaling_not_object",
                   with("rope_scaling", "linear"),
                   absl::StatusCode::kInvalidArgument,
                   {"rope_scaling"}});
  cases.push_back({"theta_string",
                   with("rope_theta", "1e4"),
                   absl::StatusCode::kInvalidArgument,
                   {"rope_theta"}});
  cases.push_back({"partial_rotary_too_big",
                   with("partial_rotary_factor", 2.0),
                   absl::StatusCode::kInvalidArgument,
                   {"partial_rotary_factor"}});
  cases.push_back({"partial_rotary_odd_dim",
                   with("partial_rotary_factor", 0.1875),  // 16*0.1875=3
                   absl::StatusCode::kInvalidArgument,
                   {"partial_rotary_factor"}});
  json opt = {{"architectures", {"OPTForCausalLM"}},
              {"vocab_size", 100},
              {"hidden_size", 64},
              {"ffn_dim", 256},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 4},
              {"max_position_embeddings", 128}};
  json post_ln = opt;
  post_ln["do_layer_norm_before"] = false;
  cases.push_back(
      {"opt_post_ln", post_ln, absl::StatusCode::kUnimplemented, {"do_layer_norm_before"}});
  json gelu_opt = opt;
  gelu_opt["activation_function"] = "gelu";
  cases.push_back(
      {"opt_gelu", gelu_opt, absl::StatusCode::kUnimplemented, {"activation_function", "relu"}});
  json opt_no_ffn = opt;
  opt_no_ffn.erase("ffn_dim");
  cases.push_back({"opt_missing_ffn", opt_no_ffn, absl::StatusCode::kInvalidArgument, {"ffn_dim"}});
  cases.push_back({"top_level_array",
                   json::array({1, 2}),
                   absl::StatusCode::kInvalidArgument,
                   {"JSON object"}});
  return cases;
}

TEST(ModelConfigErrorTest, EveryBadFieldIsNamed) {
  for (const ErrorCase& c : ErrorCases()) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<ModelConfig> r = Parse(c.config);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), c.code) << r.status();
    const std::string message(r.status().message());
    EXPECT_THAT(message, ::testing::StartsWith("/models/x/config.json: "));
    EXPECT_THAT(message, Not(HasSubstr("\n")));
    for (const std::string& s : c.substrings) EXPECT_THAT(message, HasSubstr(s));
  }
}

TEST(ModelConfigErrorTest, MalformedJson) {
  absl::StatusOr<ModelConfig> r = ParseModelConfig("{\"vocab_size\": 12,", "dir/config.json");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("dir/config.json: malformed JSON"));
  r = ParseModelConfig("", "dir/config.json");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelConfigErrorTest, MissingDirectoryAndFile) {
  absl::StatusOr<ModelConfig> r = LoadModelConfig("/nonexistent/kvscope/model");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(r.status().message(),
              HasSubstr("model directory /nonexistent/kvscope/model does not exist"));
  testing::TempDir dir;
  r = LoadModelConfig(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr(dir.path() + "/config.json"));
  testing::WriteFileOrDie(dir.Sub("config.json"), "not json");
  r = LoadModelConfig(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr(dir.path() + "/config.json: malformed JSON"));
}

// ---- RoPE frequencies --------------------------------------------------------------------

// Plain re-statement of transformers' _compute_default_rope_parameters / linear / llama3.
std::vector<double> ReferenceInvFreq(const RopeConfig& rope, int64_t dim) {
  std::vector<double> inv;
  for (int64_t i = 0; i < dim; i += 2) {
    inv.push_back(1.0 / std::pow(rope.theta, static_cast<double>(i) / static_cast<double>(dim)));
  }
  if (rope.type == RopeType::kLinear) {
    for (double& f : inv) f /= rope.factor;
  } else if (rope.type == RopeType::kLlama3) {
    const double old = static_cast<double>(rope.original_max_position_embeddings);
    const double low_wavelen = old / rope.low_freq_factor;
    const double high_wavelen = old / rope.high_freq_factor;
    for (double& f : inv) {
      const double wavelen = 2 * M_PI / f;
      double llama = wavelen > low_wavelen ? f / rope.factor : f;
      const double smooth =
          (old / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor);
      const double smoothed = (1 - smooth) * llama / rope.factor + smooth * llama;
      const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
      f = medium ? smoothed : llama;
    }
  }
  return inv;
}

TEST(RopeInvFreqTest, MatchesDoubleFormulaOnOddSizes) {
  int regimes[3] = {0, 0, 0};  // llama3: high-frequency, medium, low-frequency entries seen
  for (RopeType type : {RopeType::kDefault, RopeType::kLinear, RopeType::kLlama3}) {
    for (int64_t head_dim : {2, 6, 10, 18, 34, 80, 98, 130, 256}) {
      for (double partial : {1.0, 0.5, 0.25}) {
        for (double theta : {10000.0, 500000.0, 1e6, 77.5}) {
          ModelConfig c;
          c.family = ModelFamily::kLlama;
          c.head_dim = head_dim;
          c.rope.type = type;
          c.rope.theta = theta;
          c.rope.factor = type == RopeType::kLinear ? 3.0 : 8.0;
          c.rope.low_freq_factor = 1.0;
          c.rope.high_freq_factor = 4.0;
          c.rope.original_max_position_embeddings = 64;
          c.rope.partial_rotary_factor = partial;
          const int64_t dim = static_cast<int64_t>(head_dim * partial);
          ASSERT_EQ(RopeRotaryDim(c), dim);
          float scaling = 0;
          const std::vector<float> got = RopeInvFreq(c, &scaling);
          const std::vector<double> want = ReferenceInvFreq(c.rope, dim);
          EXPECT_EQ(scaling, 1.0f);
          ASSERT_EQ(got.size(), want.size()) << head_dim << " " << partial;
          for (size_t i = 0; i < got.size(); ++i) {
            EXPECT_EQ(got[i], static_cast<float>(want[i]))
                << "type " << static_cast<int>(type) << " head_dim " << head_dim << " i " << i;
            if (type == RopeType::kLlama3) {
              const double base = 1.0 / std::pow(theta, 2.0 * i / dim);
              const double wavelen = 2 * M_PI / base;
              regimes[wavelen < 16 ? 0 : wavelen > 64 ? 2 : 1]++;
            }
          }
        }
      }
    }
  }
  EXPECT_GT(regimes[0], 0);
  EXPECT_GT(regimes[1], 0);
  EXPECT_GT(regimes[2], 0);
}

TEST(RopeInvFreqTest, ClosedFormValues) {
  ModelConfig c;
  c.family = ModelFamily::kLlama;
  c.head_dim = 4;
  c.rope.theta = 10000.0;
  std::vector<float> f = RopeInvFreq(c, nullptr);
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(f[0], 1.0f);
  EXPECT_EQ(f[1], 0.01f);  // 10000^(-2/4)
  c.rope.type = RopeType::kLinear;
  c.rope.factor = 4.0;
  f = RopeInvFreq(c, nullptr);
  EXPECT_EQ(f[0], 0.25f);
  EXPECT_EQ(f[1], 0.0025f);
}

TEST(ModelConfigTest, NumParametersCountsTiedEmbeddingsOnce) {
  json j = BaseLlama();
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok());
  // Per layer: 2 norms (128) + q,o (2*64*64) + k,v (2*32*64) + mlp (3*128*64) = 36992.
  const int64_t layer = 2 * 64 + 2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64;
  EXPECT_EQ(c->NumParameters(), 2 * 1000 * 64 + 2 * layer + 64);
  j["tie_word_embeddings"] = true;
  c = Parse(j);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->NumParameters(), 1000 * 64 + 2 * layer + 64);
}

}  // namespace
}  // namespace kvscope::engine
