// File: engine/model_config.cc
//
// config.json parsing for the Llama family (Llama, Mistral, Qwen2) and OPT, and the RoPE
// frequency tables of transformers' ROPE_INIT_FUNCTIONS (default, linear, llama3).
#include "engine/model_config.h"

#include "common/dtype.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvscope::engine {
namespace {

using json = nlohmann::json;

constexpr char kSupportedArchitectures[] =
    "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, OPTForCausalLM";
constexpr char kSupportedRopeTypes[] = "default, linear, llama3";
// Sizes above this are rejected as implausible (and to keep every product in int64).
constexpr int64_t kMaxDimension = int64_t{1} << 31;
// Largest head_dim accepted (real models use <= 256); bounds the RoPE table.
constexpr int64_t kMaxHeadDim = int64_t{1} << 16;
// Configurations implying more parameters than this are rejected (2^50, about 1.1e15).
constexpr long double kMaxParameters = 1125899906842624.0L;

// Control characters escaped, so that every message stays on one line.
std::string Printable(std::string_view text) {
  std::string out;
  for (char ch : text) {
    const auto u = static_cast<unsigned char>(ch);
    if (u < 0x20 || u == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 15]);
    } else {
      out.push_back(ch);
    }
  }
  if (out.size() > 64) out = out.substr(0, 61) + "...";
  return out;
}

// Compact rendering of a JSON value for error messages (at most ~48 characters).
std::string Render(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 48) text = text.substr(0, 45) + "...";
  return text;
}

// Reads typed fields of one JSON object; every error names `source` and the field path.
class FieldReader {
 public:
  FieldReader(const json& object, const std::string& source, std::string prefix)
      : object_(object), source_(source), prefix_(std::move(prefix)) {}

  // True when the key exists and is not null.
  bool Has(const char* key) const {
    auto it = object_.find(key);
    return it != object_.end() && !it->is_null();
  }

  const json* Get(const char* key) const {
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  std::string Path(const char* key) const { return prefix_ + key; }

  absl::Status Missing(const char* key, const std::string& expected) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": missing required field '", Path(key), "' (", expected, ")"));
  }

  absl::Status WrongType(const char* key, const std::string& expected, const json& got) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": field '", Path(key), "' must be ",
                                                   expected, ", got ", Render(got)));
  }

  // A required integer in [min_value, kMaxDimension].
  absl::StatusOr<int64_t> Int(const char* key, int64_t min_value = 1) const {
    const json* value = Get(key);
    if (value == nullptr) return Missing(key, Expected(min_value));
    return CheckInt(key, *value, min_value);
  }

  absl::StatusOr<int64_t> IntOr(const char* key, int64_t fallback, int64_t min_value = 1) const {
    const json* value = Get(key);
    if (value == nullptr) return fallback;
    return CheckInt(key, *value, min_value);
  }

  // A required finite number, > 0 when `positive`.
  absl::StatusOr<double> Number(const char* key, bool positive = true) const {
    const json* value = Get(key);
    if (value == nullptr) return Missing(key, positive ? "a positive number" : "a number");
    return CheckNumber(key, *value, positive);
  }

  absl::StatusOr<double> NumberOr(const char* key, double fallback, bool positive = true) const {
    const json* value = Get(key);
    if (value == nullptr) return fallback;
    return CheckNumber(key, *value, positive);
  }

  absl::StatusOr<bool> BoolOr(const char* key, bool fallback) const {
    const json* value = Get(key);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) return WrongType(key, "true or false", *value);
    return value->get<bool>();
  }

  absl::StatusOr<std::string> StringOr(const char* key, std::string fallback) const {
    const json* value = Get(key);
    if (value == nullptr) return fallback;
    if (!value->is_string()) return WrongType(key, "a string", *value);
    return value->get<std::string>();
  }

 private:
  static std::string Expected(int64_t min_value) {
    if (min_value == 1) return "a positive integer";
    if (min_value == 0) return "a non-negative integer";
    return absl::StrCat("an integer >= ", min_value);
  }

  absl::StatusOr<int64_t> CheckInt(const char* key, const json& value, int64_t min_value) const {
    int64_t v = 0;
    if (value.is_number_unsigned()) {
      uint64_t u = value.get<uint64_t>();
      if (u > static_cast<uint64_t>(kMaxDimension)) {
        return absl::InvalidArgumentError(absl::StrCat(source_, ": field '", Path(key), "' is ", u,
                                                       ", more than the limit ", kMaxDimension));
      }
      v = static_cast<int64_t>(u);
    } else if (value.is_number_integer()) {
      v = value.get<int64_t>();
    } else {
      return WrongType(key, Expected(min_value), value);
    }
    if (v < min_value) return WrongType(key, Expected(min_value), value);
    if (v > kMaxDimension) {
      return absl::InvalidArgumentError(absl::StrCat(source_, ": field '", Path(key), "' is ", v,
                                                     ", more than the limit ", kMaxDimension));
    }
    return v;
  }

  absl::StatusOr<double> CheckNumber(const char* key, const json& value, bool positive) const {
    if (!value.is_number()) {
      return WrongType(key, positive ? "a positive number" : "a number", value);
    }
    double v = value.get<double>();
    if (!std::isfinite(v) || (positive && !(v > 0.0))) {
      return WrongType(key, positive ? "a positive finite number" : "a finite number", value);
    }
    return v;
  }

  const json& object_;
  std::string source_;
  std::string prefix_;
};

// Token ids: an integer, a list of integers, or null.
absl::StatusOr<std::vector<int32_t>> ReadTokenIds(const FieldReader& reader, const char* key,
                                                  const std::string& source) {
  std::vector<int32_t> ids;
  const json* value = reader.Get(key);
  if (value == nullptr) return ids;
  auto one = [&](const json& v) -> absl::Status {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 ||
        v.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      return reader.WrongType(
          key, "a token id (a non-negative 32-bit integer), a list of them or null", *value);
    }
    ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
    return absl::OkStatus();
  };
  if (value->is_array()) {
    for (const json& v : *value) KVSCOPE_RETURN_IF_ERROR(one(v));
  } else {
    KVSCOPE_RETURN_IF_ERROR(one(*value));
  }
  return ids;
}

// Maps the `architectures` list (or, when absent, `model_type`) to a supported class name.
absl::StatusOr<std::string> ReadArchitecture(const FieldReader& reader, const std::string& source) {
  auto supported = [](std::string_view name) {
    return name == "LlamaForCausalLM" || name == "MistralForCausalLM" ||
           name == "Qwen2ForCausalLM" || name == "OPTForCausalLM";
  };
  const json* archs = reader.Get("architectures");
  if (archs == nullptr) {
    const json* model_type = reader.Get("model_type");
    if (model_type == nullptr) return reader.Missing("architectures", "a list of class names");
    if (!model_type->is_string()) return reader.WrongType("model_type", "a string", *model_type);
    const std::string type = model_type->get<std::string>();
    if (type == "llama") return std::string("LlamaForCausalLM");
    if (type == "mistral") return std::string("MistralForCausalLM");
    if (type == "qwen2") return std::string("Qwen2ForCausalLM");
    if (type == "opt") return std::string("OPTForCausalLM");
    return absl::UnimplementedError(absl::StrCat(
        source, ": model_type '", Printable(type),
        "' is not supported (supported architectures: ", kSupportedArchitectures, ")"));
  }
  if (!archs->is_array() || archs->empty()) {
    return reader.WrongType("architectures", "a non-empty list of class names", *archs);
  }
  for (const json& a : *archs) {
    if (!a.is_string()) {
      return reader.WrongType("architectures", "a non-empty list of class names", *archs);
    }
  }
  for (const json& a : *archs) {
    if (supported(a.get<std::string>())) return a.get<std::string>();
  }
  return absl::UnimplementedError(
      absl::StrCat(source, ": architecture ", Render(*archs),
                   " is not supported (supported: ", kSupportedArchitectures, ")"));
}

// RoPE settings in either layout: transformers 5.x `rope_parameters` {rope_type, rope_theta,
// ...}, or 4.x top-level `rope_theta` plus optional `rope_scaling` {rope_type|type, ...}.
absl::Status ReadRope(const FieldReader& top, const std::string& source, RopeConfig* rope) {
  const json* params = top.Get("rope_parameters");
  const char* section = "rope_parameters";
  if (params == nullptr) {
    params = top.Get("rope_scaling");
    section = "rope_scaling";
  }
  if (params != nullptr && !params->is_object()) {
    return top.WrongType(section, "an object or null", *params);
  }
  static const json kEmpty = json::object();
  FieldReader reader(params != nullptr ? *params : kEmpty, source, absl::StrCat(section, "."));

  // Theta: inside rope_parameters (5.x), else top level (4.x), else transformers' default.
  KVSCOPE_ASSIGN_OR_RETURN(double top_theta, top.NumberOr("rope_theta", 10000.0));
  rope->theta = top_theta;
  if (section == std::string_view("rope_parameters")) {
    KVSCOPE_ASSIGN_OR_RETURN(rope->theta, reader.NumberOr("rope_theta", top_theta));
  }

  std::string type = "default";
  if (reader.Has("rope_type")) {
    KVSCOPE_ASSIGN_OR_RETURN(type, reader.StringOr("rope_type", "default"));
  } else if (reader.Has("type")) {
    KVSCOPE_ASSIGN_OR_RETURN(type, reader.StringOr("type", "default"));
  }

  KVSCOPE_ASSIGN_OR_RETURN(double partial, top.NumberOr("partial_rotary_factor", 1.0));
  KVSCOPE_ASSIGN_OR_RETURN(rope->partial_rotary_factor,
                           reader.NumberOr("partial_rotary_factor", partial));
  if (rope->partial_rotary_factor > 1.0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": field 'partial_rotary_factor' must be in (0, 1], got ",
                     rope->partial_rotary_factor));
  }

  if (type == "default") {
    rope->type = RopeType::kDefault;
  } else if (type == "linear") {
    rope->type = RopeType::kLinear;
    KVSCOPE_ASSIGN_OR_RETURN(rope->factor, reader.Number("factor"));
  } else if (type == "llama3") {
    rope->type = RopeType::kLlama3;
    KVSCOPE_ASSIGN_OR_RETURN(rope->factor, reader.Number("factor"));
    KVSCOPE_ASSIGN_OR_RETURN(rope->low_freq_factor, reader.Number("low_freq_factor"));
    KVSCOPE_ASSIGN_OR_RETURN(rope->high_freq_factor, reader.Number("high_freq_factor"));
    KVSCOPE_ASSIGN_OR_RETURN(rope->original_max_position_embeddings,
                             reader.Int("original_max_position_embeddings"));
    if (!(rope->high_freq_factor > rope->low_freq_factor)) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": field '", section, ".high_freq_factor' (", rope->high_freq_factor,
          ") must be greater than '", section, ".low_freq_factor' (", rope->low_freq_factor, ")"));
    }
  } else {
    return absl::UnimplementedError(
        absl::StrCat(source, ": ", section, ".rope_type '", Printable(type),
                     "' is not supported (supported: ", kSupportedRopeTypes, ")"));
  }
  return absl::OkStatus();
}

absl::Status ParseLlamaFamily(const FieldReader& r, const std::string& source, ModelConfig* c) {
  const bool is_llama = c->architecture == "LlamaForCausalLM";
  const bool is_qwen2 = c->architecture == "Qwen2ForCausalLM";
  c->family = ModelFamily::kLlama;
  KVSCOPE_ASSIGN_OR_RETURN(c->vocab_size, r.Int("vocab_size"));
  KVSCOPE_ASSIGN_OR_RETURN(c->hidden_size, r.Int("hidden_size"));
  KVSCOPE_ASSIGN_OR_RETURN(c->intermediate_size, r.Int("intermediate_size"));
  KVSCOPE_ASSIGN_OR_RETURN(c->num_layers, r.Int("num_hidden_layers"));
  KVSCOPE_ASSIGN_OR_RETURN(c->num_heads, r.Int("num_attention_heads"));
  KVSCOPE_ASSIGN_OR_RETURN(c->num_kv_heads, r.IntOr("num_key_value_heads", c->num_heads));
  KVSCOPE_ASSIGN_OR_RETURN(c->max_position_embeddings, r.Int("max_position_embeddings"));
  if (r.Has("head_dim")) {
    KVSCOPE_ASSIGN_OR_RETURN(c->head_dim, r.Int("head_dim"));
  } else {
    if (c->hidden_size % c->num_heads != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": 'hidden_size' (", c->hidden_size, ") is not divisible by ",
                       "'num_attention_heads' (", c->num_heads, ") and 'head_dim' is absent"));
    }
    c->head_dim = c->hidden_size / c->num_heads;
  }
  KVSCOPE_ASSIGN_OR_RETURN(c->norm_eps, r.NumberOr("rms_norm_eps", 1e-6));
  KVSCOPE_ASSIGN_OR_RETURN(c->tie_word_embeddings, r.BoolOr("tie_word_embeddings", false));
  KVSCOPE_ASSIGN_OR_RETURN(std::string act, r.StringOr("hidden_act", "silu"));
  if (act != "silu") {
    return absl::UnimplementedError(absl::StrCat(source, ": field 'hidden_act' is '",
                                                 Printable(act),
                                                 "'; the Llama family supports 'silu' only"));
  }
  if (is_qwen2) {
    // Qwen2Attention: q/k/v always carry a bias, o_proj never does.
    c->qkv_bias = true;
    c->o_bias = false;
  } else if (is_llama) {
    KVSCOPE_ASSIGN_OR_RETURN(bool attention_bias, r.BoolOr("attention_bias", false));
    c->qkv_bias = attention_bias;
    c->o_bias = attention_bias;
    KVSCOPE_ASSIGN_OR_RETURN(c->mlp_bias, r.BoolOr("mlp_bias", false));
  }
  KVSCOPE_RETURN_IF_ERROR(ReadRope(r, source, &c->rope));
  if (c->head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": head_dim ", c->head_dim,
                     (r.Has("head_dim") ? "" : " (hidden_size / num_attention_heads)"),
                     " is larger than the limit ", kMaxHeadDim));
  }
  if (!(c->rope.theta > 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": field 'rope_theta' must be greater than 1, got ", c->rope.theta));
  }
  const int64_t rot = RopeRotaryDim(*c);
  if (rot < 2 || rot % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": 'partial_rotary_factor' (", c->rope.partial_rotary_factor,
                     ") times 'head_dim' (", c->head_dim, ") gives ", rot,
                     " rotary dimensions; expected a positive even number"));
  }
  for (float f : RopeInvFreq(*c, nullptr)) {
    if (!std::isfinite(f) || !(f > 0.0f)) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": the RoPE parameters (rope_theta ", c->rope.theta, ", factor ",
                       c->rope.factor, ") give frequencies outside the float32 range"));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseOpt(const FieldReader& r, const std::string& source, ModelConfig* c) {
  c->family = ModelFamily::kOpt;
  KVSCOPE_ASSIGN_OR_RETURN(c->vocab_size, r.Int("vocab_size"));
  KVSCOPE_ASSIGN_OR_RETURN(c->hidden_size, r.Int("hidden_size"));
  KVSCOPE_ASSIGN_OR_RETURN(c->intermediate_size, r.Int("ffn_dim"));
  KVSCOPE_ASSIGN_OR_RETURN(c->num_layers, r.Int("num_hidden_layers"));
  KVSCOPE_ASSIGN_OR_RETURN(c->num_heads, r.Int("num_attention_heads"));
  KVSCOPE_ASSIGN_OR_RETURN(c->max_position_embeddings, r.Int("max_position_embeddings"));
  KVSCOPE_ASSIGN_OR_RETURN(c->word_embed_proj_dim, r.IntOr("word_embed_proj_dim", c->hidden_size));
  c->num_kv_heads = c->num_heads;
  if (c->hidden_size % c->num_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": 'hidden_size' (", c->hidden_size,
                                                   ") is not divisible by ",
                                                   "'num_attention_heads' (", c->num_heads, ")"));
  }
  c->head_dim = c->hidden_size / c->num_heads;
  KVSCOPE_ASSIGN_OR_RETURN(c->do_layer_norm_before, r.BoolOr("do_layer_norm_before", true));
  if (!c->do_layer_norm_before) {
    return absl::UnimplementedError(
        absl::StrCat(source,
                     ": field 'do_layer_norm_before' is false (post-LayerNorm OPT, e.g. opt-350m); "
                     "kvscope supports the pre-LayerNorm variant only"));
  }
  KVSCOPE_ASSIGN_OR_RETURN(bool remove_final, r.BoolOr("_remove_final_layer_norm", false));
  if (remove_final) {
    return absl::UnimplementedError(absl::StrCat(
        source, ": field '_remove_final_layer_norm' is true; kvscope expects the final LayerNorm"));
  }
  KVSCOPE_ASSIGN_OR_RETURN(bool affine, r.BoolOr("layer_norm_elementwise_affine", true));
  if (!affine) {
    return absl::UnimplementedError(
        absl::StrCat(source,
                     ": field 'layer_norm_elementwise_affine' is false; kvscope expects LayerNorm "
                     "weights and biases"));
  }
  KVSCOPE_ASSIGN_OR_RETURN(bool bias, r.BoolOr("enable_bias", true));
  c->qkv_bias = c->o_bias = c->mlp_bias = bias;
  KVSCOPE_ASSIGN_OR_RETURN(std::string act, r.StringOr("activation_function", "relu"));
  if (act != "relu") {
    return absl::UnimplementedError(absl::StrCat(source, ": field 'activation_function' is '",
                                                 Printable(act), "'; OPT supports 'relu' only"));
  }
  KVSCOPE_ASSIGN_OR_RETURN(c->tie_word_embeddings, r.BoolOr("tie_word_embeddings", true));
  c->norm_eps = 1e-5;
  c->position_offset = 2;
  return absl::OkStatus();
}

long double ApproxParameters(const ModelConfig& c) {
  // Same formula as NumParameters, in long double so that absurd sizes cannot overflow.
  using F = long double;
  const F h = c.hidden_size, v = c.vocab_size, i = c.intermediate_size, l = c.num_layers;
  const F q = F(c.num_heads) * F(c.head_dim), kv = F(c.num_kv_heads) * F(c.head_dim);
  const F e = c.family == ModelFamily::kOpt ? F(c.word_embed_proj_dim) : h;
  const F layer = 2 * q * h + 2 * kv * h + 3 * i * h + 4 * h + q + 2 * kv + 2 * i;
  return 2 * v * e + F(c.max_position_embeddings + 2) * h + 2 * h * e + l * layer + 2 * h;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

int64_t ModelConfig::NumParameters() const {
  const int64_t h = hidden_size;
  int64_t total = 0;
  if (family == ModelFamily::kLlama) {
    int64_t layer = 2 * h;                                     // two RMSNorm weights
    layer += q_size() * h + 2 * kv_size() * h + h * q_size();  // q, k, v, o
    if (qkv_bias) layer += q_size() + 2 * kv_size();
    if (o_bias) layer += h;
    layer += 3 * intermediate_size * h;  // gate, up, down
    if (mlp_bias) layer += 2 * intermediate_size + h;
    total = vocab_size * h + num_layers * layer + h;  // embed, layers, final norm
    if (!tie_word_embeddings) total += vocab_size * h;
    return total;
  }
  const int64_t e = word_embed_proj_dim > 0 ? word_embed_proj_dim : h;
  int64_t layer = 4 * h;  // two LayerNorms (weight + bias)
  layer += q_size() * h + 2 * kv_size() * h + h * q_size();
  if (qkv_bias) layer += q_size() + 2 * kv_size();
  if (o_bias) layer += h;
  layer += 2 * intermediate_size * h;  // fc1, fc2
  if (mlp_bias) layer += intermediate_size + h;
  total = vocab_size * e + (max_position_embeddings + position_offset) * h;
  if (e != h) total += 2 * h * e;       // project_in, project_out
  total += num_layers * layer + 2 * h;  // layers, final LayerNorm
  if (!tie_word_embeddings) total += vocab_size * e;
  return total;
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text,
                                             std::string_view source_view) {
  const std::string source(source_view);
  json root;
  try {
    root = json::parse(json_text.begin(), json_text.end());
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": malformed JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": expected a JSON object at the top level, got ", Render(root)));
  }
  try {
    FieldReader reader(root, source, "");
    ModelConfig config;
    KVSCOPE_ASSIGN_OR_RETURN(config.architecture, ReadArchitecture(reader, source));
    if (config.architecture == "OPTForCausalLM") {
      KVSCOPE_RETURN_IF_ERROR(ParseOpt(reader, source, &config));
    } else {
      KVSCOPE_RETURN_IF_ERROR(ParseLlamaFamily(reader, source, &config));
    }
    if (config.num_heads % config.num_kv_heads != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": 'num_attention_heads' (", config.num_heads,
                       ") is not divisible by 'num_key_value_heads' (", config.num_kv_heads, ")"));
    }
    if (ApproxParameters(config) > kMaxParameters) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": the sizes imply about ",
                                                     static_cast<double>(ApproxParameters(config)),
                                                     " parameters, more than kvscope can address"));
    }
    KVSCOPE_ASSIGN_OR_RETURN(std::vector<int32_t> bos,
                             ReadTokenIds(reader, "bos_token_id", source));
    config.bos_token_id = bos.empty() ? -1 : bos.front();
    KVSCOPE_ASSIGN_OR_RETURN(config.eos_token_ids, ReadTokenIds(reader, "eos_token_id", source));
    // `torch_dtype` (4.x) or `dtype` (5.x); informative only, so an odd value is ignored.
    for (const char* key : {"torch_dtype", "dtype"}) {
      const json* v = reader.Get(key);
      if (v != nullptr && v->is_string() && config.torch_dtype.empty()) {
        config.torch_dtype = v->get<std::string>();
      }
    }
    return config;
  } catch (const json::exception& e) {
    // Accessors are type-checked first; this is a safety net so no exception escapes.
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid config: ", e.what()));
  }
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  if (!IsDirectory(model_dir)) {
    return absl::NotFoundError(absl::StrCat("model directory ", model_dir, " does not exist"));
  }
  const std::string path = model_dir + "/config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat(path, ": no such file (a model directory needs config.json)"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat(path, ": read error"));
  return ParseModelConfig(text.str(), path);
}

int64_t RopeRotaryDim(const ModelConfig& config) {
  if (config.family != ModelFamily::kLlama) return 0;
  // transformers: dim = int(head_dim * partial_rotary_factor).
  return static_cast<int64_t>(static_cast<double>(config.head_dim) *
                              config.rope.partial_rotary_factor);
}

std::vector<float> RopeInvFreq(const ModelConfig& config, float* attention_scaling) {
  if (attention_scaling != nullptr) *attention_scaling = 1.0f;
  const int64_t dim = RopeRotaryDim(config);
  std::vector<float> out;
  if (dim <= 0) return out;
  const RopeConfig& rope = config.rope;
  const int64_t half = (dim + 1) / 2;  // len(arange(0, dim, 2))
  out.resize(static_cast<size_t>(half));
  constexpr double kPi = 3.14159265358979323846;
  for (int64_t i = 0; i < half; ++i) {
    // _compute_default_rope_parameters: 1 / base^(arange(0, dim, 2) / dim).
    double inv = 1.0 / std::pow(rope.theta, static_cast<double>(2 * i) / static_cast<double>(dim));
    switch (rope.type) {
      case RopeType::kDefault:
        break;
      case RopeType::kLinear:
        inv /= rope.factor;
        break;
      case RopeType::kLlama3: {
        // _compute_llama3_parameters.
        const double old_len = static_cast<double>(rope.original_max_position_embeddings);
        const double low_freq_wavelen = old_len / rope.low_freq_factor;
        const double high_freq_wavelen = old_len / rope.high_freq_factor;
        const double wavelen = 2.0 * kPi / inv;
        double scaled = wavelen > low_freq_wavelen ? inv / rope.factor : inv;
        const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
        if (medium) {
          const double smooth = (old_len / wavelen - rope.low_freq_factor) /
                                (rope.high_freq_factor - rope.low_freq_factor);
          scaled = (1.0 - smooth) * scaled / rope.factor + smooth * scaled;
        }
        inv = scaled;
        break;
      }
    }
    out[static_cast<size_t>(i)] = rope.inv_freq_bf16 ? Bf16ToF32(F32ToBf16(static_cast<float>(inv)))
                                                     : static_cast<float>(inv);
  }
  return out;
}

}  // namespace kvscope::engine
