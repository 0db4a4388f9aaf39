// File: engine/presets.cc
//
// Shapes are those of the models' Hugging Face config.json files.
#include "engine/presets.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kvscope::engine {
namespace {

struct LlamaShape {
  const char* architecture;
  int64_t vocab, hidden, intermediate, layers, heads, kv_heads, max_positions;
  double theta;
  double eps;
  bool tie;
};

ModelConfig Llama(const LlamaShape& s, int32_t bos, std::vector<int32_t> eos, const char* dtype) {
  ModelConfig c;
  c.architecture = s.architecture;
  c.family = ModelFamily::kLlama;
  c.vocab_size = s.vocab;
  c.hidden_size = s.hidden;
  c.intermediate_size = s.intermediate;
  c.num_layers = s.layers;
  c.num_heads = s.heads;
  c.num_kv_heads = s.kv_heads;
  c.head_dim = s.hidden / s.heads;
  c.max_position_embeddings = s.max_positions;
  c.norm_eps = s.eps;
  c.tie_word_embeddings = s.tie;
  c.rope.theta = s.theta;
  c.bos_token_id = bos;
  c.eos_token_ids = std::move(eos);
  c.torch_dtype = dtype;
  if (c.architecture == "Qwen2ForCausalLM") c.qkv_bias = true;
  return c;
}

ModelConfig WithLlama3Rope(ModelConfig c, double factor) {
  c.rope.type = RopeType::kLlama3;
  c.rope.factor = factor;
  c.rope.low_freq_factor = 1.0;
  c.rope.high_freq_factor = 4.0;
  c.rope.original_max_position_embeddings = 8192;
  return c;
}

ModelConfig Opt(int64_t vocab, int64_t hidden, int64_t ffn, int64_t layers, int64_t heads,
                int64_t max_positions, int64_t word_embed_proj_dim, const char* dtype) {
  ModelConfig c;
  c.architecture = "OPTForCausalLM";
  c.family = ModelFamily::kOpt;
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.intermediate_size = ffn;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = heads;
  c.head_dim = hidden / heads;
  c.max_position_embeddings = max_positions;
  c.norm_eps = 1e-5;
  c.tie_word_embeddings = true;
  c.qkv_bias = c.o_bias = c.mlp_bias = true;
  c.word_embed_proj_dim = word_embed_proj_dim;
  c.position_offset = 2;
  c.do_layer_norm_before = true;
  c.bos_token_id = 2;
  c.eos_token_ids = {2};
  c.torch_dtype = dtype;
  return c;
}

std::vector<Preset> BuildPresets() {
  constexpr char kLlama[] = "LlamaForCausalLM";
  std::vector<Preset> p;
  // Small models for CPU runs and tests.
  p.push_back(
      {"llama-tiny", "tiny Llama (about 1.3M parameters; 4 layers, 8 query / 4 KV heads)",
       Llama({kLlama, 2048, 128, 384, 4, 8, 4, 2048, 10000.0, 1e-5, false}, 1, {2}, "float32")});
  p.push_back(
      {"llama-100m", "Llama with about 100M parameters (12 layers, 12 query / 4 KV heads, tied)",
       Llama({kLlama, 32000, 768, 2048, 12, 12, 4, 4096, 10000.0, 1e-5, true}, 1, {2}, "float32")});
  p.push_back({"opt-tiny", "tiny OPT (about 1.3M parameters; 4 layers, 4 heads)",
               Opt(2048, 128, 512, 4, 4, 2048, 128, "float32")});
  // Llama 2 (meta-llama/Llama-2-*-hf).
  p.push_back({"llama-2-7b", "Llama 2 7B shapes (32 layers, MHA, 4K context)",
               Llama({kLlama, 32000, 4096, 11008, 32, 32, 32, 4096, 10000.0, 1e-5, false}, 1, {2},
                     "float16")});
  p.push_back({"llama-2-13b", "Llama 2 13B shapes (40 layers, MHA, 4K context)",
               Llama({kLlama, 32000, 5120, 13824, 40, 40, 40, 4096, 10000.0, 1e-5, false}, 1, {2},
                     "float16")});
  p.push_back({"llama-2-70b", "Llama 2 70B shapes (80 layers, 64 query / 8 KV heads)",
               Llama({kLlama, 32000, 8192, 28672, 80, 64, 8, 4096, 10000.0, 1e-5, false}, 1, {2},
                     "float16")});
  // Llama 3 / 3.1 / 3.2 (meta-llama/Meta-Llama-3-8B, Llama-3.1-8B, Llama-3.2-1B).
  p.push_back({"llama-3-8b", "Llama 3 8B shapes (32 layers, 32 query / 8 KV heads, 128K vocab)",
               Llama({kLlama, 128256, 4096, 14336, 32, 32, 8, 8192, 500000.0, 1e-5, false}, 128000,
                     {128001}, "bfloat16")});
  p.push_back({"llama-3-70b", "Llama 3 70B shapes (80 layers, 64 query / 8 KV heads)",
               Llama({kLlama, 128256, 8192, 28672, 80, 64, 8, 8192, 500000.0, 1e-5, false}, 128000,
                     {128001}, "bfloat16")});
  p.push_back(
      {"llama-3.1-8b", "Llama 3.1 8B shapes (llama3 RoPE scaling x8, 128K context)",
       WithLlama3Rope(Llama({kLlama, 128256, 4096, 14336, 32, 32, 8, 131072, 500000.0, 1e-5, false},
                            128000, {128001}, "bfloat16"),
                      8.0)});
  p.push_back(
      {"llama-3.2-1b",
       "Llama 3.2 1B shapes (16 layers, 32 query / 8 KV heads, tied, llama3 RoPE x32)",
       WithLlama3Rope(Llama({kLlama, 128256, 2048, 8192, 16, 32, 8, 131072, 500000.0, 1e-5, true},
                            128000, {128001}, "bfloat16"),
                      32.0)});
  // Mistral 7B v0.1 (its sliding window of 4096 is not modelled).
  p.push_back(
      {"mistral-7b", "Mistral 7B v0.1 shapes (32 layers, 32 query / 8 KV heads)",
       Llama({"MistralForCausalLM", 32000, 4096, 14336, 32, 32, 8, 32768, 10000.0, 1e-5, false}, 1,
             {2}, "bfloat16")});
  // Qwen2 (Qwen/Qwen2-7B, Qwen/Qwen2-0.5B): q/k/v bias, theta 1e6.
  p.push_back(
      {"qwen2-7b", "Qwen2 7B shapes (28 layers, 28 query / 4 KV heads, q/k/v bias)",
       Llama({"Qwen2ForCausalLM", 152064, 3584, 18944, 28, 28, 4, 131072, 1000000.0, 1e-6, false},
             151643, {151643}, "bfloat16")});
  p.push_back(
      {"qwen2-0.5b", "Qwen2 0.5B shapes (24 layers, 14 query / 2 KV heads, tied)",
       Llama({"Qwen2ForCausalLM", 151936, 896, 4864, 24, 14, 2, 131072, 1000000.0, 1e-6, true},
             151643, {151643}, "bfloat16")});
  // OPT (facebook/opt-*).
  p.push_back({"opt-125m", "OPT 125M shapes (12 layers, 12 heads)",
               Opt(50272, 768, 3072, 12, 12, 2048, 768, "float16")});
  p.push_back({"opt-350m",
               "OPT 350M shapes (24 layers, project_in/out 512<->1024; run pre-LayerNorm, "
               "while the real checkpoint is post-LayerNorm)",
               Opt(50272, 1024, 4096, 24, 16, 2048, 512, "float16")});
  p.push_back({"opt-1.3b", "OPT 1.3B shapes (24 layers, 32 heads)",
               Opt(50272, 2048, 8192, 24, 32, 2048, 2048, "float16")});
  p.push_back({"opt-6.7b", "OPT 6.7B shapes (32 layers, 32 heads)",
               Opt(50272, 4096, 16384, 32, 32, 2048, 4096, "float16")});
  p.push_back({"opt-13b", "OPT 13B shapes (40 layers, 40 heads)",
               Opt(50272, 5120, 20480, 40, 40, 2048, 5120, "float16")});
  p.push_back({"opt-30b", "OPT 30B shapes (48 layers, 56 heads)",
               Opt(50272, 7168, 28672, 48, 56, 2048, 7168, "float16")});
  return p;
}

}  // namespace

const std::vector<Preset>& AllPresets() {
  static const std::vector<Preset>* const kPresets = new std::vector<Preset>(BuildPresets());
  return *kPresets;
}

absl::StatusOr<ModelConfig> PresetConfig(std::string_view name) {
  for (const Preset& preset : AllPresets()) {
    if (preset.name == name) return preset.config;
  }
  std::vector<std::string> names;
  for (const Preset& preset : AllPresets()) names.push_back(preset.name);
  return absl::NotFoundError(absl::StrCat("unknown preset '", std::string(name),
                                          "' (available: ", absl::StrJoin(names, ", "), ")"));
}

}  // namespace kvscope::engine
