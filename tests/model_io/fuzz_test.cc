// Randomized robustness test for the config.json and safetensors parsers: a corpus of
// more than 20k mutated inputs (bit flips, byte edits, truncations, insertions, deletions,
// numeric and string swaps, JSON-aware field edits) built from valid files. Every input must
// give either a value that satisfies the parser's contract or an error Status whose message
// is one line naming the source; nothing may crash or read out of bounds (run under
// -DKVSCOPE_SANITIZE=ON to check the latter).
#include <chrono>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/model_config.h"
#include "engine/safetensors.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace kvscope::engine {
namespace {

using json = nlohmann::json;
using Rng = std::mt19937_64;

constexpr uint64_t kSeed = 0x6b7673636f7065ull;  // "kvscope"
constexpr char kConfigSource[] = "fuzz/config.json";
constexpr char kSafetensorsSource[] = "fuzz/model.safetensors";

size_t Below(Rng& rng, size_t n) { return n == 0 ? 0 : static_cast<size_t>(rng() % n); }

const std::vector<std::string>& InterestingTokens() {
  static const std::vector<std::string> kTokens = {"0",
                                                   "-1",
                                                   "1",
                                                   "-0",
                                                   "2",
                                                   "3",
                                                   "7",
                                                   "0.5",
                                                   "1e308",
                                                   "1e999",
                                                   "-1e999",
                                                   "1e-320",
                                                   "18446744073709551615",
                                                   "18446744073709551616",
                                                   "9223372036854775807",
                                                   "9223372036854775808",
                                                   "-9223372036854775808",
                                                   "2147483648",
                                                   "4294967296",
                                                   "65536",
                                                   "NaN",
                                                   "null",
                                                   "true",
                                                   "false",
                                                   "\"7\"",
                                                   "\"\"",
                                                   "[]",
                                                   "{}",
                                                   "[1,2]",
                                                   "{\"a\":1}",
                                                   "\"F32\"",
                                                   "\"BF16\"",
                                                   "\"I32\"",
                                                   "\"yarn\"",
                                                   "\"llama3\"",
                                                   "\"\\u0000\"",
                                                   "\"\\n\""};
  return kTokens;
}

// Byte-level mutations; `structural` biases inserted bytes towards JSON syntax.
std::string MutateBytes(const std::string& input, Rng& rng) {
  static const std::string kChars = "{}[]\":,-+0123456789eE. \\nulltruefals\x00\xff\x80";
  std::string s = input;
  const int rounds = 1 + static_cast<int>(Below(rng, 3));
  for (int r = 0; r < rounds; ++r) {
    switch (Below(rng, 9)) {
      case 0:  // bit flips
        for (int k = 0; k < 1 + static_cast<int>(Below(rng, 4)) && !s.empty(); ++k) {
          s[Below(rng, s.size())] ^= static_cast<char>(1u << Below(rng, 8));
        }
        break;
      case 1:  // random byte
        if (!s.empty()) s[Below(rng, s.size())] = static_cast<char>(rng());
        break;
      case 2:  // structural byte
        if (!s.empty()) s[Below(rng, s.size())] = kChars[Below(rng, kChars.size())];
        break;
      case 3:  // truncation
        s.resize(Below(rng, s.size() + 1));
        break;
      case 4: {  // insertion
        std::string ins;
        for (size_t k = 0, n = 1 + Below(rng, 8); k < n; ++k) {
          ins.push_back(Below(rng, 2) ? kChars[Below(rng, kChars.size())]
                                      : static_cast<char>(rng()));
        }
        s.insert(Below(rng, s.size() + 1), ins);
        break;
      }
      case 5: {  // deletion of a range
        if (s.empty()) break;
        const size_t at = Below(rng, s.size());
        s.erase(at, 1 + Below(rng, std::min<size_t>(64, s.size() - at)));
        break;
      }
      case 6: {  // duplicate a range elsewhere
        if (s.empty()) break;
        const size_t at = Below(rng, s.size());
        const std::string chunk = s.substr(at, 1 + Below(rng, 32));
        s.insert(Below(rng, s.size() + 1), chunk);
        break;
      }
      case 7: {  // numeric swap: replace one number token with an interesting token
        std::vector<std::pair<size_t, size_t>> numbers;
        for (size_t i = 0; i < s.size();) {
          if ((s[i] >= '0' && s[i] <= '9') || s[i] == '-') {
            size_t j = i;
            while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '-' ||
                                    s[j] == '.' || s[j] == 'e' || s[j] == 'E' || s[j] == '+')) {
              ++j;
            }
            numbers.emplace_back(i, j - i);
            i = j;
          } else {
            ++i;
          }
        }
        if (numbers.empty()) break;
        const auto [at, len] = numbers[Below(rng, numbers.size())];
        const auto& tokens = InterestingTokens();
        // Half the time another number of the same input (swaps offsets, sizes, ...).
        if (Below(rng, 2) == 0) {
          const auto [at2, len2] = numbers[Below(rng, numbers.size())];
          s.replace(at, len, s.substr(at2, len2));
        } else {
          s.replace(at, len, tokens[Below(rng, tokens.size())]);
        }
        break;
      }
      case 8: {  // string swap: replace one quoted string with another of the input
        std::vector<std::pair<size_t, size_t>> strings;
        for (size_t i = 0; i < s.size(); ++i) {
          if (s[i] != '"') continue;
          size_t j = s.find('"', i + 1);
          if (j == std::string::npos) break;
          strings.emplace_back(i, j - i + 1);
          i = j;
        }
        if (strings.size() < 2) break;
        const auto [a, alen] = strings[Below(rng, strings.size())];
        const auto [b, blen] = strings[Below(rng, strings.size())];
        s.replace(a, alen, s.substr(b, blen));
        break;
      }
    }
  }
  return s;
}

json RandomValue(Rng& rng) {
  const auto& tokens = InterestingTokens();
  const std::string& t = tokens[Below(rng, tokens.size())];
  json v = json::parse(t, nullptr, /*allow_exceptions=*/false);
  return v.is_discarded() ? json(t) : v;
}

// JSON-aware edits of a config object: delete a field, replace a value, swap two values,
// recursively inside nested objects (rope_scaling, rope_parameters).
json MutateJson(json j, Rng& rng) {
  const int rounds = 1 + static_cast<int>(Below(rng, 3));
  for (int r = 0; r < rounds; ++r) {
    json* target = &j;
    // Sometimes descend into a nested object.
    std::vector<std::string> nested;
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (it->is_object()) nested.push_back(it.key());
    }
    if (!nested.empty() && Below(rng, 3) == 0) target = &j[nested[Below(rng, nested.size())]];
    if (!target->is_object() || target->empty()) continue;
    std::vector<std::string> keys;
    for (auto it = target->begin(); it != target->end(); ++it) keys.push_back(it.key());
    const std::string key = keys[Below(rng, keys.size())];
    switch (Below(rng, 4)) {
      case 0:
        target->erase(key);
        break;
      case 1:
        (*target)[key] = RandomValue(rng);
        break;
      case 2: {
        const std::string other = keys[Below(rng, keys.size())];
        std::swap((*target)[key], (*target)[other]);
        break;
      }
      case 3:
        if ((*target)[key].is_number()) {
          (*target)[key] = (*target)[key].get<double>() * (Below(rng, 2) ? -1 : 3) + 1;
        } else {
          (*target)[key] = RandomValue(rng);
        }
        break;
    }
  }
  return j;
}

struct Outcomes {
  int ok = 0;
  int errors = 0;
  std::vector<std::string> violations;  // contract violations (first few kept)
  void Violation(const std::string& what, const std::string& input) {
    if (violations.size() < 5) {
      std::string shown = input.substr(0, 300);
      for (char& ch : shown) {
        if (static_cast<unsigned char>(ch) < 0x20) ch = '?';
      }
      violations.push_back(absl::StrCat(what, " -- input: ", shown));
    }
  }
};

void CheckError(const absl::Status& status, std::string_view source, const std::string& input,
                Outcomes* out) {
  ++out->errors;
  const std::string message(status.message());
  if (!absl::StartsWith(message, absl::StrCat(std::string(source), ": "))) {
    out->Violation(absl::StrCat("message does not start with the source: ", message), input);
  }
  if (message.find('\n') != std::string::npos) {
    out->Violation(absl::StrCat("multi-line message: ", message), input);
  }
  if (status.code() != absl::StatusCode::kInvalidArgument &&
      status.code() != absl::StatusCode::kUnimplemented) {
    out->Violation(absl::StrCat("unexpected code: ", status.ToString()), input);
  }
}

void RunConfig(const std::string& text, Outcomes* out) {
  absl::StatusOr<ModelConfig> c = ParseModelConfig(text, kConfigSource);
  if (!c.ok()) {
    CheckError(c.status(), kConfigSource, text, out);
    return;
  }
  ++out->ok;
  if (c->vocab_size <= 0 || c->hidden_size <= 0 || c->num_layers <= 0 || c->num_heads <= 0 ||
      c->num_kv_heads <= 0 || c->head_dim <= 0 || c->intermediate_size <= 0 ||
      c->num_heads % c->num_kv_heads != 0 || c->NumParameters() <= 0) {
    out->Violation("accepted config with invalid sizes", text);
  }
  float scaling = 0;
  const std::vector<float> inv = RopeInvFreq(*c, &scaling);
  for (float f : inv) {
    if (!std::isfinite(f) || !(f > 0)) {
      out->Violation(absl::StrCat("non-finite or non-positive inv_freq ", f), text);
      break;
    }
  }
  if (c->family == ModelFamily::kLlama &&
      inv.size() != static_cast<size_t>(RopeRotaryDim(*c) / 2)) {
    out->Violation("inv_freq size", text);
  }
}

void RunSafetensors(const std::string& bytes, Outcomes* out) {
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  absl::StatusOr<SafetensorsHeader> h =
      ParseSafetensorsHeader(data, bytes.size(), kSafetensorsSource);
  if (!h.ok()) {
    CheckError(h.status(), kSafetensorsSource, bytes, out);
    return;
  }
  ++out->ok;
  volatile uint8_t sink = 0;
  for (const SafetensorsTensor& t : h->tensors) {
    if (t.end < t.begin || h->data_start + t.end > bytes.size() ||
        t.end - t.begin != static_cast<uint64_t>(t.num_elements) * t.element_size) {
      out->Violation(absl::StrCat("accepted tensor with bad offsets: ", t.name), bytes);
      return;
    }
    if (t.end > t.begin) {
      sink = sink + data[h->data_start + t.begin] + data[h->data_start + t.end - 1];
    }
    (void)SupportedDType(t, kSafetensorsSource);
  }
}

std::vector<std::string> SeedConfigs() {
  std::vector<std::string> seeds;
  const json llama = {{"architectures", {"LlamaForCausalLM"}},
                      {"vocab_size", 1000},
                      {"hidden_size", 64},
                      {"intermediate_size", 128},
                      {"num_hidden_layers", 2},
                      {"num_attention_heads", 4},
                      {"num_key_value_heads", 2},
                      {"max_position_embeddings", 256},
                      {"rms_norm_eps", 1e-6},
                      {"rope_theta", 500000.0},
                      {"bos_token_id", 1},
                      {"eos_token_id", {2, 3}},
                      {"rope_scaling",
                       {{"rope_type", "llama3"},
                        {"factor", 8.0},
                        {"low_freq_factor", 1.0},
                        {"high_freq_factor", 4.0},
                        {"original_max_position_embeddings", 32}}}};
  seeds.push_back(llama.dump(2));
  json v5 = llama;
  v5.erase("rope_scaling");
  v5.erase("rope_theta");
  v5["rope_parameters"] = {{"rope_type", "linear"},
                           {"rope_theta", 1e4},
                           {"factor", 2.0},
                           {"partial_rotary_factor", 0.5}};
  v5["head_dim"] = 32;
  v5["attention_bias"] = true;
  seeds.push_back(v5.dump());
  json qwen = llama;
  qwen["architectures"] = {"Qwen2ForCausalLM"};
  qwen["rope_scaling"] = nullptr;
  seeds.push_back(qwen.dump(1));
  seeds.push_back(json{
      {"architectures", {"OPTForCausalLM"}},
      {"vocab_size", 100},
      {"hidden_size", 64},
      {"ffn_dim", 256},
      {"num_hidden_layers", 2},
      {"num_attention_heads", 4},
      {"max_position_embeddings", 128},
      {"word_embed_proj_dim", 32},
      {"enable_bias", true},
      {"do_layer_norm_before", true},
      {"activation_function",
       "relu"}}.dump(2));
  for (const char* rel :
       {"fixtures/hf-reference/llama-gqa/fp32/config.json",
        "fixtures/hf-reference/llama3-rope/fp32/config.json",
        "fixtures/hf-reference/llama3-rope/fp32-v4-config/config.json",
        "fixtures/hf-reference/qwen2-bias/bf16/config.json",
        "fixtures/hf-reference/opt/fp32/config.json", "models/tinystories-656k/config.json"}) {
    const std::string path = testing::SharedPath(rel);
    if (!path.empty()) seeds.push_back(testing::ReadFileOrDie(path));
  }
  return seeds;
}

// Valid safetensors files to mutate: small files of every dtype and shape kind, and a
// model-like header (from a real fixture when ../shared is present).
std::vector<std::string> SeedSafetensors() {
  std::vector<std::string> seeds;
  seeds.push_back(EncodeSafetensors({{"a.weight", "F32", {2, 3}, std::string(24, '\1')},
                                     {"b.bias", "BF16", {5}, std::string(10, '\2')},
                                     {"c", "F16", {}, std::string(2, '\3')},
                                     {"d", "I64", {0, 4}, ""},
                                     {"e", "U8", {3, 1, 2}, std::string(6, '\4')}}));
  std::vector<SafetensorsWriteTensor> model;
  for (int layer = 0; layer < 3; ++layer) {
    for (const char* name : {"self_attn.q_proj.weight", "self_attn.k_proj.weight",
                             "mlp.up_proj.weight", "input_layernorm.weight"}) {
      model.push_back(
          {absl::StrCat("model.layers.", layer, ".", name), "BF16", {4, 2}, std::string(16, '\5')});
    }
  }
  seeds.push_back(EncodeSafetensors(model));
  const std::string real =
      testing::SharedPath("fixtures/hf-reference/qwen2-bias/bf16/model.safetensors");
  if (!real.empty()) seeds.push_back(testing::ReadFileOrDie(real));
  return seeds;
}

// Splits a safetensors file into (header text, data section).
std::pair<std::string, std::string> SplitSafetensors(const std::string& bytes) {
  uint64_t len = 0;
  for (int i = 7; i >= 0; --i) len = (len << 8) | static_cast<uint8_t>(bytes[i]);
  return {bytes.substr(8, len), bytes.substr(8 + len)};
}

std::string JoinSafetensors(const std::string& header, const std::string& data) {
  std::string out;
  out.reserve(8 + header.size() + data.size());
  const uint64_t len = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  return out + header + data;
}

TEST(ParserFuzzTest, MutatedConfigsAndSafetensors) {
  const auto start = std::chrono::steady_clock::now();
  Rng rng(kSeed);
  int cases = 0;

  Outcomes config_out;
  const std::vector<std::string> configs = SeedConfigs();
  for (const std::string& seed : configs) RunConfig(seed, &config_out);
  ASSERT_EQ(config_out.ok, static_cast<int>(configs.size())) << "a seed config does not parse";
  for (int i = 0; i < 10000; ++i, ++cases) {
    RunConfig(MutateBytes(configs[Below(rng, configs.size())], rng), &config_out);
  }
  for (int i = 0; i < 10000; ++i, ++cases) {
    const json j = json::parse(configs[Below(rng, configs.size())]);
    RunConfig(MutateJson(j, rng).dump(), &config_out);
  }

  Outcomes st_out;
  const std::vector<std::string> files = SeedSafetensors();
  for (const std::string& seed : files) RunSafetensors(seed, &st_out);
  ASSERT_EQ(st_out.ok, static_cast<int>(files.size())) << "a seed file does not parse";
  // Whole-file byte mutations (length prefix included) of the small files.
  for (int i = 0; i < 10000; ++i, ++cases) {
    RunSafetensors(MutateBytes(files[Below(rng, 2)], rng), &st_out);
  }
  // Header mutations with a consistent length prefix, so the JSON validation is reached.
  for (int i = 0; i < 6000; ++i, ++cases) {
    const auto [header, data] = SplitSafetensors(files[Below(rng, files.size())]);
    RunSafetensors(JoinSafetensors(MutateBytes(header, rng), data), &st_out);
  }
  // JSON-aware header edits (dtype / shape / offset swaps).
  for (int i = 0; i < 4000; ++i, ++cases) {
    const auto [header, data] = SplitSafetensors(files[Below(rng, files.size())]);
    json j = json::parse(header);
    std::vector<std::string> names;
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (it.key() != "__metadata__") names.push_back(it.key());
    }
    const std::string& name = names[Below(rng, names.size())];
    switch (Below(rng, 4)) {
      case 0:
        j[name] = MutateJson(j[name], rng);
        break;
      case 1: {
        const std::string& other = names[Below(rng, names.size())];
        std::swap(j[name]["data_offsets"], j[other]["data_offsets"]);
        break;
      }
      case 2:
        j[name]["data_offsets"][Below(rng, 2)] =
            j[name]["data_offsets"][0].get<uint64_t>() + Below(rng, 9) - 4;
        break;
      case 3:
        j[name]["dtype"] = RandomValue(rng);
        break;
    }
    RunSafetensors(JoinSafetensors(j.dump(), data), &st_out);
  }

  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(cases, 20000);
#if !defined(__SANITIZE_ADDRESS__)  // sanitizers slow the parsers several-fold
  EXPECT_LT(seconds, 20.0);
#endif
  for (const std::string& v : config_out.violations) ADD_FAILURE() << "config.json: " << v;
  for (const std::string& v : st_out.violations) ADD_FAILURE() << "safetensors: " << v;
  // Both outcomes occur, so the corpus reaches past the first checks.
  EXPECT_GT(config_out.ok, 500);
  EXPECT_GT(config_out.errors, 500);
  EXPECT_GT(st_out.ok, 200);
  EXPECT_GT(st_out.errors, 500);
  std::printf("fuzz: %d cases in %.2f s; config ok %d / errors %d; safetensors ok %d / errors %d\n",
              cases, seconds, config_out.ok, config_out.errors, st_out.ok, st_out.errors);
}

}  // namespace
}  // namespace kvscope::engine
