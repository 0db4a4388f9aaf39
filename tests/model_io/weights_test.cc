// Tests for engine/weights: loading every fixture model (fp32, bf16, f16, sharded, renamed,
// unaligned), zero-copy views, load errors, and SyntheticWeights.
#include "engine/weights.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "engine/presets.h"
#include "engine/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/model_io/model_io_test_helpers.h"
#include "tests/test_util.h"

extern "C" {
// From libgomp (linked through kvscope_model_io); declared here so the test needs no -fopenmp.
void omp_set_num_threads(int num_threads);
int omp_get_max_threads(void);
}

namespace kvscope::engine {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;
using testing::AllViews;
using testing::TempDir;

constexpr const char* kModels[] = {"llama-gqa", "llama3-rope", "qwen2-bias", "opt"};

std::string FixtureDir(const std::string& model, const std::string& dtype) {
  return testing::SharedPath("fixtures/hf-reference/" + model + "/" + dtype);
}

#define REQUIRE_FIXTURES()                                                         \
  if (testing::SharedPath("fixtures/hf-reference/opt/fp32/config.json").empty()) { \
    GTEST_SKIP() << "needs " << testing::SharedDir() << "/fixtures/hf-reference";  \
  }

// The Hugging Face name behind a view name of AllViews (independent of the loader's table).
std::string HfName(ModelFamily family, const std::string& view) {
  static const std::map<std::string, std::string> kLlama = {
      {"attn_norm", "input_layernorm.weight"}, {"q", "self_attn.q_proj.weight"},
      {"k", "self_attn.k_proj.weight"},        {"v", "self_attn.v_proj.weight"},
      {"o", "self_attn.o_proj.weight"},        {"q_bias", "self_attn.q_proj.bias"},
      {"k_bias", "self_attn.k_proj.bias"},     {"v_bias", "self_attn.v_proj.bias"},
      {"o_bias", "self_attn.o_proj.bias"},     {"mlp_norm", "post_attention_layernorm.weight"},
      {"gate", "mlp.gate_proj.weight"},        {"up", "mlp.up_proj.weight"},
      {"down", "mlp.down_proj.weight"}};
  static const std::map<std::string, std::string> kOpt = {
      {"attn_norm", "self_attn_layer_norm.weight"},
      {"attn_norm_bias", "self_attn_layer_norm.bias"},
      {"q", "self_attn.q_proj.weight"},
      {"k", "self_attn.k_proj.weight"},
      {"v", "self_attn.v_proj.weight"},
      {"o", "self_attn.out_proj.weight"},
      {"q_bias", "self_attn.q_proj.bias"},
      {"k_bias", "self_attn.k_proj.bias"},
      {"v_bias", "self_attn.v_proj.bias"},
      {"o_bias", "self_attn.out_proj.bias"},
      {"mlp_norm", "final_layer_norm.weight"},
      {"mlp_norm_bias", "final_layer_norm.bias"},
      {"up", "fc1.weight"},
      {"up_bias", "fc1.bias"},
      {"down", "fc2.weight"},
      {"down_bias", "fc2.bias"}};
  const bool llama = family == ModelFamily::kLlama;
  if (view == "embed")
    return llama ? "model.embed_tokens.weight" : "model.decoder.embed_tokens.weight";
  if (view == "positions") return "model.decoder.embed_positions.weight";
  if (view == "final_norm")
    return llama ? "model.norm.weight" : "model.decoder.final_layer_norm.weight";
  if (view == "final_norm_bias") return "model.decoder.final_layer_norm.bias";
  if (view == "lm_head") return "lm_head.weight";
  // layers.N.field
  const size_t dot = view.find('.', 7);
  const std::string layer = view.substr(7, dot - 7);
  const std::string field = view.substr(dot + 1);
  return absl::StrCat(llama ? "model.layers." : "model.decoder.layers.", layer, ".",
                      (llama ? kLlama : kOpt).at(field));
}

// All tensors of a safetensors file, ready to be rewritten.
std::vector<SafetensorsWriteTensor> ReadTensors(const std::string& path) {
  absl::StatusOr<std::shared_ptr<const SafetensorsFile>> f = SafetensorsFile::Open(path);
  if (!f.ok()) {
    ADD_FAILURE() << f.status();
    return {};
  }
  std::vector<SafetensorsWriteTensor> out;
  for (const SafetensorsTensor& t : (*f)->tensors()) {
    out.push_back(
        {t.name, t.dtype, t.shape,
         std::string(reinterpret_cast<const char*>((*f)->TensorData(t)), t.end - t.begin)});
  }
  return out;
}

// A model directory in `dir` with the fixture's config.json and the given tensors.
void WriteModel(const TempDir& dir, const std::string& fixture_dir,
                const std::vector<SafetensorsWriteTensor>& tensors) {
  testing::WriteFileOrDie(dir.Sub("config.json"),
                          testing::ReadFileOrDie(fixture_dir + "/config.json"));
  ASSERT_TRUE(WriteSafetensors(dir.Sub("model.safetensors"), tensors).ok());
}

void ExpectIdenticalWeights(const ModelWeights& a, const ModelWeights& b) {
  const auto va = AllViews(a);
  const auto vb = AllViews(b);
  ASSERT_EQ(va.size(), vb.size());
  for (size_t i = 0; i < va.size(); ++i) {
    SCOPED_TRACE(va[i].first);
    const WeightView& x = va[i].second;
    const WeightView& y = vb[i].second;
    ASSERT_EQ(x.empty(), y.empty());
    if (x.empty()) continue;
    ASSERT_EQ(x.rows, y.rows);
    ASSERT_EQ(x.cols, y.cols);
    EXPECT_EQ(std::memcmp(x.data, y.data, static_cast<size_t>(x.rows * x.cols) * 4), 0);
  }
  EXPECT_EQ(a.total_bytes, b.total_bytes);
}

// Checks every view against the tensor of the file it should come from.
void ExpectMatchesFile(const ModelWeights& w, const std::string& safetensors_path) {
  absl::StatusOr<std::shared_ptr<const SafetensorsFile>> f =
      SafetensorsFile::Open(safetensors_path);
  ASSERT_TRUE(f.ok()) << f.status();
  size_t checked = 0;
  for (const auto& [name, view] : AllViews(w)) {
    if (view.empty()) continue;
    std::string hf = HfName(w.config.family, name);
    if (name == "lm_head" && w.config.tie_word_embeddings) {
      EXPECT_EQ(view.data, w.embed.data);
      continue;
    }
    SCOPED_TRACE(hf);
    const SafetensorsTensor* t = (*f)->Find(hf);
    ASSERT_NE(t, nullptr);
    ASSERT_EQ(t->num_elements, view.rows * view.cols);
    std::vector<float> want(static_cast<size_t>(t->num_elements));
    absl::StatusOr<DType> dtype = SupportedDType(*t, safetensors_path);
    ASSERT_TRUE(dtype.ok());
    ConvertToF32(*dtype, (*f)->TensorData(*t), want.size(), want.data());
    ASSERT_EQ(std::memcmp(want.data(), view.data, want.size() * 4), 0);
    ++checked;
  }
  // Every tensor of the file was checked (tied heads aside).
  EXPECT_EQ(checked, (*f)->tensors().size());
}

// ---- Fixture models ----------------------------------------------------------------------

TEST(LoadModelWeightsTest, EveryFixtureFp32AndBf16Identical) {
  REQUIRE_FIXTURES();
  for (const char* model : kModels) {
    SCOPED_TRACE(model);
    absl::StatusOr<ModelWeights> fp32 = LoadModelWeights(FixtureDir(model, "fp32"));
    absl::StatusOr<ModelWeights> bf16 = LoadModelWeights(FixtureDir(model, "bf16"));
    ASSERT_TRUE(fp32.ok()) << fp32.status();
    ASSERT_TRUE(bf16.ok()) << bf16.status();
    ExpectIdenticalWeights(*fp32, *bf16);
    ExpectMatchesFile(*fp32, FixtureDir(model, "fp32") + "/model.safetensors");
    ExpectMatchesFile(*bf16, FixtureDir(model, "bf16") + "/model.safetensors");
    EXPECT_EQ(fp32->total_bytes, fp32->config.NumParameters() * 4);
    EXPECT_EQ(static_cast<int64_t>(fp32->layers.size()), fp32->config.num_layers);
    // Norm weights were moved away from 1 in the fixtures, so they must have been read.
    EXPECT_NE(fp32->final_norm.data[0], 1.0f);
  }
}

TEST(LoadModelWeightsTest, Fp32IsZeroCopyAndBf16DropsTheMapping) {
  REQUIRE_FIXTURES();
  for (const char* model : kModels) {
    SCOPED_TRACE(model);
    absl::StatusOr<ModelWeights> fp32 = LoadModelWeights(FixtureDir(model, "fp32"));
    ASSERT_TRUE(fp32.ok()) << fp32.status();
    ASSERT_EQ(fp32->mapped.size(), 1u);
    EXPECT_TRUE(fp32->owned.empty());
    const uint8_t* begin = fp32->mapped[0]->data();
    const uint8_t* end = begin + fp32->mapped[0]->size();
    for (const auto& [name, view] : AllViews(*fp32)) {
      if (view.empty()) continue;
      const auto* p = reinterpret_cast<const uint8_t*>(view.data);
      EXPECT_TRUE(p >= begin && p + view.rows * view.cols * 4 <= end) << name;
    }
    absl::StatusOr<ModelWeights> bf16 = LoadModelWeights(FixtureDir(model, "bf16"));
    ASSERT_TRUE(bf16.ok()) << bf16.status();
    EXPECT_TRUE(bf16->mapped.empty());
    EXPECT_FALSE(bf16->owned.empty());
  }
}

TEST(LoadModelWeightsTest, ShapesAndTies) {
  REQUIRE_FIXTURES();
  absl::StatusOr<ModelWeights> llama = LoadModelWeights(FixtureDir("llama-gqa", "fp32"));
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_EQ(llama->embed.rows, 512);
  EXPECT_EQ(llama->embed.cols, 128);
  EXPECT_EQ(llama->layers[1].k.rows, 32);
  EXPECT_EQ(llama->layers[1].o.cols, 128);
  EXPECT_EQ(llama->layers[0].down.cols, 344);
  EXPECT_EQ(llama->layers[0].attn_norm.rows, 1);
  EXPECT_TRUE(llama->layers[0].q_bias.empty());
  EXPECT_NE(llama->lm_head.data, llama->embed.data);  // untied
  EXPECT_TRUE(llama->positions.empty());

  absl::StatusOr<ModelWeights> qwen = LoadModelWeights(FixtureDir("qwen2-bias", "bf16"));
  ASSERT_TRUE(qwen.ok()) << qwen.status();
  EXPECT_EQ(qwen->layers[0].k_bias.cols, 32);
  EXPECT_TRUE(qwen->layers[0].o_bias.empty());
  EXPECT_EQ(qwen->lm_head.data, qwen->embed.data);  // tied

  absl::StatusOr<ModelWeights> opt = LoadModelWeights(FixtureDir("opt", "fp32"));
  ASSERT_TRUE(opt.ok()) << opt.status();
  EXPECT_EQ(opt->positions.rows, 1026);
  EXPECT_TRUE(opt->project_in.empty());
  EXPECT_TRUE(opt->layers[0].gate.empty());
  EXPECT_EQ(opt->layers[0].up.rows, 512);
  EXPECT_EQ(opt->layers[0].up_bias.cols, 512);
  EXPECT_FALSE(opt->final_norm_bias.empty());
  EXPECT_EQ(opt->lm_head.data, opt->embed.data);
}

TEST(LoadModelWeightsTest, V4ConfigLoadsTheSameModel) {
  REQUIRE_FIXTURES();
  absl::StatusOr<ModelWeights> a = LoadModelWeights(FixtureDir("llama3-rope", "fp32"));
  absl::StatusOr<ModelWeights> b = LoadModelWeights(FixtureDir("llama3-rope", "fp32-v4-config"));
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ExpectIdenticalWeights(*a, *b);
}

TEST(LoadModelWeightsTest, TinyStoriesTiedHeadStoredAsLmHead) {
  // safetensors keeps one name of a shared tensor; this export kept lm_head.weight.
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  absl::StatusOr<ModelWeights> w = LoadModelWeights(dir);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->embed.rows, 2048);
  EXPECT_EQ(w->lm_head.data, w->embed.data);
  EXPECT_EQ(w->total_bytes, w->config.NumParameters() * 4);
}

TEST(LoadModelWeightsTest, ShardedCheckpointLoadsIdentically) {
  REQUIRE_FIXTURES();
  for (const auto& [model, dtype] :
       std::vector<std::pair<std::string, std::string>>{{"llama-gqa", "fp32"}, {"opt", "bf16"}}) {
    SCOPED_TRACE(model);
    const std::string src = FixtureDir(model, dtype);
    std::vector<SafetensorsWriteTensor> tensors = ReadTensors(src + "/model.safetensors");
    std::vector<SafetensorsWriteTensor> shard[2];
    json weight_map = json::object();
    for (size_t i = 0; i < tensors.size(); ++i) {
      const int s = i < tensors.size() / 2 ? 0 : 1;
      weight_map[tensors[i].name] = absl::StrCat("model-0000", s + 1, "-of-00002.safetensors");
      shard[s].push_back(tensors[i]);
    }
    TempDir dir;
    testing::WriteFileOrDie(dir.Sub("config.json"), testing::ReadFileOrDie(src + "/config.json"));
    ASSERT_TRUE(WriteSafetensors(dir.Sub("model-00001-of-00002.safetensors"), shard[0]).ok());
    ASSERT_TRUE(WriteSafetensors(dir.Sub("model-00002-of-00002.safetensors"), shard[1]).ok());
    testing::WriteFileOrDie(
        dir.Sub("model.safetensors.index.json"),
        json{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}.dump(2));
    absl::StatusOr<ModelWeights> sharded = LoadModelWeights(dir.path());
    absl::StatusOr<ModelWeights> single = LoadModelWeights(src);
    ASSERT_TRUE(sharded.ok()) << sharded.status();
    ASSERT_TRUE(single.ok()) << single.status();
    ExpectIdenticalWeights(*single, *sharded);
    if (dtype == "fp32") {
      EXPECT_EQ(sharded->mapped.size(), 2u);
    }

    // A tensor the index lists but its shard lacks.
    shard[1].pop_back();
    ASSERT_TRUE(WriteSafetensors(dir.Sub("model-00002-of-00002.safetensors"), shard[1]).ok());
    absl::StatusOr<ModelWeights> broken = LoadModelWeights(dir.path());
    ASSERT_FALSE(broken.ok());
    EXPECT_EQ(broken.status().code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(broken.status().message(), HasSubstr(tensors.back().name));
    EXPECT_THAT(broken.status().message(), HasSubstr("model-00002-of-00002.safetensors"));
  }
}

TEST(LoadModelWeightsTest, F16UnalignedAndUnprefixedVariants) {
  REQUIRE_FIXTURES();
  const std::string src = FixtureDir("llama-gqa", "fp32");
  absl::StatusOr<ModelWeights> ref = LoadModelWeights(src);
  ASSERT_TRUE(ref.ok()) << ref.status();
  const std::vector<SafetensorsWriteTensor> tensors = ReadTensors(src + "/model.safetensors");

  {  // Names without the leading "model.".
    std::vector<SafetensorsWriteTensor> renamed = tensors;
    for (auto& t : renamed) {
      if (absl::StartsWith(t.name, "model.")) t.name = t.name.substr(6);
    }
    TempDir dir;
    WriteModel(dir, src, renamed);
    absl::StatusOr<ModelWeights> w = LoadModelWeights(dir.path());
    ASSERT_TRUE(w.ok()) << w.status();
    ExpectIdenticalWeights(*ref, *w);
  }
  {  // F16: each value rounds through half precision.
    std::vector<SafetensorsWriteTensor> half = tensors;
    for (auto& t : half) {
      std::string bytes(t.bytes.size() / 2, '\0');
      for (size_t i = 0; i < t.bytes.size() / 4; ++i) {
        float f;
        std::memcpy(&f, t.bytes.data() + 4 * i, 4);
        const uint16_t h = F32ToF16(f);
        std::memcpy(bytes.data() + 2 * i, &h, 2);
      }
      t.dtype = "F16";
      t.bytes = std::move(bytes);
    }
    TempDir dir;
    WriteModel(dir, src, half);
    absl::StatusOr<ModelWeights> w = LoadModelWeights(dir.path());
    ASSERT_TRUE(w.ok()) << w.status();
    const auto a = AllViews(*ref);
    const auto b = AllViews(*w);
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i].second.empty()) continue;
      for (int64_t j = 0; j < a[i].second.rows * a[i].second.cols; ++j) {
        ASSERT_EQ(F16ToF32(F32ToF16(a[i].second.data[j])), b[i].second.data[j]) << a[i].first;
      }
    }
  }
  {  // F32 data at an offset that is not 4-byte aligned: copied, same values.
    std::string bytes = EncodeSafetensors(tensors);
    uint64_t len = 0;
    for (int i = 7; i >= 0; --i) len = (len << 8) | static_cast<uint8_t>(bytes[i]);
    bytes.insert(8 + len, "  ");
    len += 2;
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((len >> (8 * i)) & 0xff);
    TempDir dir;
    testing::WriteFileOrDie(dir.Sub("config.json"), testing::ReadFileOrDie(src + "/config.json"));
    testing::WriteFileOrDie(dir.Sub("model.safetensors"), bytes);
    absl::StatusOr<ModelWeights> w = LoadModelWeights(dir.path());
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_TRUE(w->mapped.empty());
    EXPECT_FALSE(w->owned.empty());
    ExpectIdenticalWeights(*ref, *w);
  }
}

// ---- Load errors -------------------------------------------------------------------------

void ExpectLoadError(const std::string& dir, absl::StatusCode code,
                     const std::vector<std::string>& substrings) {
  absl::StatusOr<ModelWeights> w = LoadModelWeights(dir);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), code) << w.status();
  EXPECT_THAT(std::string(w.status().message()), ::testing::Not(HasSubstr("\n")));
  for (const std::string& s : substrings) EXPECT_THAT(w.status().message(), HasSubstr(s));
}

TEST(LoadModelWeightsErrorTest, MissingDirectoryConfigAndWeights) {
  ExpectLoadError("/nonexistent/kvscope/m", absl::StatusCode::kNotFound,
                  {"model directory /nonexistent/kvscope/m does not exist"});
  TempDir dir;
  ExpectLoadError(dir.path(), absl::StatusCode::kNotFound, {dir.Sub("config.json")});
  testing::WriteFileOrDie(
      dir.Sub("config.json"),
      json{{"architectures", {"OPTForCausalLM"}}, {"vocab_size", 100}, {"hidden_size", 64},
           {"ffn_dim", 256}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
           {"max_position_embeddings", 128}}
          .dump());
  ExpectLoadError(dir.path(), absl::StatusCode::kNotFound, {dir.Sub("model.safetensors")});
  // Synthetic weights written as a checkpoint load back bit for bit.
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir.path());
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<ModelWeights> synthetic = SyntheticWeights(*config, 5);
  ASSERT_TRUE(synthetic.ok());
  std::vector<SafetensorsWriteTensor> tensors;
  for (const auto& [name, view] : AllViews(*synthetic)) {
    if (view.empty() || name == "lm_head") continue;
    std::vector<int64_t> shape = {view.rows, view.cols};
    if (view.rows == 1 && name != "embed") shape = {view.cols};
    tensors.push_back({HfName(ModelFamily::kOpt, name), "F32", shape,
                       std::string(reinterpret_cast<const char*>(view.data),
                                   static_cast<size_t>(view.rows * view.cols) * 4)});
  }
  ASSERT_TRUE(WriteSafetensors(dir.Sub("model.safetensors"), tensors).ok());
  absl::StatusOr<ModelWeights> loaded = LoadModelWeights(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectIdenticalWeights(*synthetic, *loaded);
  testing::WriteFileOrDie(dir.Sub("config.json"), "{not json");
  ExpectLoadError(dir.path(), absl::StatusCode::kInvalidArgument,
                  {dir.Sub("config.json"), "malformed JSON"});
}

TEST(LoadModelWeightsErrorTest, BadTensors) {
  REQUIRE_FIXTURES();
  const std::string src = FixtureDir("llama-gqa", "fp32");
  const std::vector<SafetensorsWriteTensor> tensors = ReadTensors(src + "/model.safetensors");
  auto edited = [&](const std::string& name, auto edit) {
    std::vector<SafetensorsWriteTensor> out;
    for (SafetensorsWriteTensor t : tensors) {
      if (t.name == name && !edit(t)) continue;  // edit returns false to drop the tensor
      out.push_back(std::move(t));
    }
    return out;
  };
  {
    TempDir dir;
    WriteModel(dir, src, edited("model.layers.1.mlp.up_proj.weight", [](SafetensorsWriteTensor&) {
                 return false;
               }));
    ExpectLoadError(
        dir.path(), absl::StatusCode::kNotFound,
        {dir.Sub("model.safetensors"), "model.layers.1.mlp.up_proj.weight", "not found"});
  }
  {
    TempDir dir;
    WriteModel(dir, src, edited("lm_head.weight", [](SafetensorsWriteTensor&) { return false; }));
    ExpectLoadError(dir.path(), absl::StatusCode::kNotFound,
                    {"lm_head.weight", "tie_word_embeddings"});
  }
  {
    TempDir dir;
    WriteModel(dir, src,
               edited("model.layers.0.self_attn.q_proj.weight", [](SafetensorsWriteTensor& t) {
                 t.shape = {64, 256};
                 return true;
               }));
    ExpectLoadError(dir.path(), absl::StatusCode::kInvalidArgument,
                    {dir.Sub("model.safetensors"),
                     "tensor model.layers.0.self_attn.q_proj.weight has shape [64, 256], "
                     "expected [128, 128] from config.json"});
  }
  {
    TempDir dir;
    WriteModel(dir, src, edited("model.norm.weight", [](SafetensorsWriteTensor& t) {
                 t.dtype = "I32";
                 return true;
               }));
    ExpectLoadError(dir.path(), absl::StatusCode::kInvalidArgument,
                    {dir.Sub("model.safetensors"), "model.norm.weight", "I32"});
  }
  {  // Truncated file.
    TempDir dir;
    testing::WriteFileOrDie(dir.Sub("config.json"), testing::ReadFileOrDie(src + "/config.json"));
    const std::string bytes = EncodeSafetensors(tensors);
    testing::WriteFileOrDie(dir.Sub("model.safetensors"), bytes.substr(0, bytes.size() - 100));
    ExpectLoadError(dir.path(), absl::StatusCode::kInvalidArgument,
                    {dir.Sub("model.safetensors"), "past the end"});
  }
  {  // More layers in config.json than in the checkpoint.
    TempDir dir;
    json config = json::parse(testing::ReadFileOrDie(src + "/config.json"));
    config["num_hidden_layers"] = 1000000;
    testing::WriteFileOrDie(dir.Sub("config.json"), config.dump());
    ASSERT_TRUE(WriteSafetensors(dir.Sub("model.safetensors"), tensors).ok());
    ExpectLoadError(dir.path(), absl::StatusCode::kNotFound,
                    {"model.layers.2.input_layernorm.weight", "num_hidden_layers"});
  }
}

// ---- Synthetic weights -------------------------------------------------------------------

bool SameBits(const ModelWeights& a, const ModelWeights& b) {
  const auto va = AllViews(a);
  const auto vb = AllViews(b);
  for (size_t i = 0; i < va.size(); ++i) {
    const WeightView& x = va[i].second;
    if (x.empty()) continue;
    if (std::memcmp(x.data, vb[i].second.data, static_cast<size_t>(x.rows * x.cols) * 4) != 0) {
      return false;
    }
  }
  return true;
}

TEST(SyntheticWeightsTest, DeterministicPerSeedAcrossThreadCounts) {
  absl::StatusOr<ModelConfig> config = PresetConfig("llama-tiny");
  ASSERT_TRUE(config.ok());
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  absl::StatusOr<ModelWeights> one = SyntheticWeights(*config, 42);
  omp_set_num_threads(3);
  absl::StatusOr<ModelWeights> three = SyntheticWeights(*config, 42);
  omp_set_num_threads(threads);
  absl::StatusOr<ModelWeights> again = SyntheticWeights(*config, 42);
  absl::StatusOr<ModelWeights> other = SyntheticWeights(*config, 43);
  ASSERT_TRUE(one.ok() && three.ok() && again.ok() && other.ok());
  EXPECT_TRUE(SameBits(*one, *three));
  EXPECT_TRUE(SameBits(*one, *again));
  EXPECT_FALSE(SameBits(*one, *other));
  // Every random matrix differs across seeds; tensors within a model differ from each other.
  EXPECT_NE(std::memcmp(one->layers[0].q.data, other->layers[0].q.data, 64), 0);
  EXPECT_NE(std::memcmp(one->layers[0].q.data, one->layers[1].q.data, 64), 0);
  // Golden bits: the generator must not change silently between versions.
  uint32_t bits[2];
  std::memcpy(&bits[0], &one->embed.data[0], 4);
  std::memcpy(&bits[1], &one->layers[3].down.data[100], 4);
  EXPECT_EQ(bits[0], 1042150432u) << "embed[0] = " << one->embed.data[0];
  EXPECT_EQ(bits[1], 1017637300u) << "down[100] = " << one->layers[3].down.data[100];
}

TEST(SyntheticWeightsTest, ValueRangesAndShapes) {
  for (const char* name : {"llama-tiny", "opt-tiny"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<ModelConfig> config = PresetConfig(name);
    ASSERT_TRUE(config.ok());
    absl::StatusOr<ModelWeights> w = SyntheticWeights(*config, 7);
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_EQ(w->total_bytes, config->NumParameters() * 4);
    EXPECT_EQ(w->embed.rows, config->vocab_size);
    EXPECT_EQ(w->lm_head.rows, config->vocab_size);
    for (const LayerWeights& l : w->layers) {
      EXPECT_EQ(l.q.rows, config->q_size());
      EXPECT_EQ(l.k.rows, config->kv_size());
      EXPECT_EQ(l.o.cols, config->q_size());
      EXPECT_EQ(l.down.cols, config->intermediate_size);
      for (int64_t i = 0; i < l.attn_norm.cols; ++i) ASSERT_EQ(l.attn_norm.data[i], 1.0f);
      for (int64_t i = 0; i < l.mlp_norm_bias.cols; ++i) ASSERT_EQ(l.mlp_norm_bias.data[i], 0.0f);
      for (int64_t i = 0; i < l.q_bias.cols; ++i) ASSERT_LE(std::fabs(l.q_bias.data[i]), 0.02f);
      const float bound = 1.0f / std::sqrt(static_cast<float>(l.q.cols));
      double sum = 0, sum_sq = 0;
      const int64_t n = l.q.rows * l.q.cols;
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_LE(std::fabs(l.q.data[i]), bound);
        sum += l.q.data[i];
        sum_sq += static_cast<double>(l.q.data[i]) * l.q.data[i];
      }
      // Uniform(-b, b): mean 0, variance b^2 / 3.
      EXPECT_NEAR(sum / n, 0.0, 0.05 * bound);
      EXPECT_NEAR(sum_sq / n, bound * bound / 3.0, 0.1 * bound * bound / 3.0);
    }
    for (int64_t i = 0; i < w->embed.rows * w->embed.cols; ++i) {
      ASSERT_LE(std::fabs(w->embed.data[i]), 1.0f);
    }
  }
}

TEST(SyntheticWeightsTest, TiedSharesOneBufferAndOptProjections) {
  ModelConfig c;
  c.architecture = "OPTForCausalLM";
  c.family = ModelFamily::kOpt;
  c.vocab_size = 300;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_layers = 2;
  c.num_heads = c.num_kv_heads = 4;
  c.head_dim = 16;
  c.max_position_embeddings = 50;
  c.word_embed_proj_dim = 32;
  c.tie_word_embeddings = true;
  c.qkv_bias = c.o_bias = c.mlp_bias = true;
  absl::StatusOr<ModelWeights> w = SyntheticWeights(c, 1);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->lm_head.data, w->embed.data);
  EXPECT_EQ(w->embed.cols, 32);
  EXPECT_EQ(w->positions.rows, 52);
  EXPECT_EQ(w->project_in.rows, 64);
  EXPECT_EQ(w->project_in.cols, 32);
  EXPECT_EQ(w->project_out.rows, 32);
  EXPECT_EQ(w->project_out.cols, 64);
  EXPECT_EQ(w->total_bytes, c.NumParameters() * 4);
  c.tie_word_embeddings = false;
  w = SyntheticWeights(c, 1);
  ASSERT_TRUE(w.ok());
  EXPECT_NE(w->lm_head.data, w->embed.data);
  EXPECT_EQ(w->total_bytes, c.NumParameters() * 4);
}

TEST(SyntheticWeightsTest, ResourceExhaustedAboveLimit) {
  absl::StatusOr<ModelConfig> config = PresetConfig("llama-2-7b");
  ASSERT_TRUE(config.ok());
  absl::StatusOr<ModelWeights> w = SyntheticWeights(*config, 1, int64_t{1} << 30);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(w.status().message(), HasSubstr(absl::StrCat(config->NumParameters() * 4, " bytes")));
  EXPECT_THAT(w.status().message(), HasSubstr("1073741824"));
}

TEST(SyntheticWeightsTest, Llama100mFitsInOneGiB) {
  absl::StatusOr<ModelConfig> config = PresetConfig("llama-100m");
  ASSERT_TRUE(config.ok());
  absl::StatusOr<ModelWeights> w = SyntheticWeights(*config, 3, int64_t{1} << 30);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->total_bytes, config->NumParameters() * 4);
  EXPECT_EQ(w->lm_head.data, w->embed.data);
}

}  // namespace
}  // namespace kvscope::engine
