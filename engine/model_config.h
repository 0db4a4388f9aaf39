// File: engine/model_config.h
//
// The architecture description of a decoder-only model, read from a Hugging Face
// `config.json` (transformers 4.x layout: rope_theta/rope_scaling at top level; 5.x layout:
// rope_parameters) or built from a named synthetic preset (engine/presets.h).
#ifndef KVSCOPE_ENGINE_MODEL_CONFIG_H_
#define KVSCOPE_ENGINE_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kvscope::engine {

// Llama family: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM (RMSNorm, RoPE,
// SiLU-gated MLP). OPT: OPTForCausalLM (LayerNorm, learned positions, ReLU MLP).
enum class ModelFamily { kLlama, kOpt };

enum class RopeType { kDefault, kLinear, kLlama3 };

struct RopeConfig {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;
  double factor = 1.0;            // linear and llama3
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
  double partial_rotary_factor = 1.0;  // fraction of head_dim that is rotated
  // Round the frequencies to bfloat16, as a transformers model does after
  // `model.to(torch.bfloat16)` (the cast reaches the non-persistent `inv_freq` buffer, and a
  // later cast back to float32 cannot restore it). Off for models loaded normally; on to
  // reproduce outputs of such a cast model (the ../shared/fixtures/hf-reference models were
  // rounded to bf16 that way). Not read from config.json.
  bool inv_freq_bf16 = false;
};

struct ModelConfig {
  std::string architecture;  // e.g. "LlamaForCausalLM", as written in config.json
  ModelFamily family = ModelFamily::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // MLP width (OPT: ffn_dim)
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // == num_heads without grouped-query attention
  int64_t head_dim = 0;      // explicit `head_dim`, else hidden_size / num_heads
  int64_t max_position_embeddings = 0;
  double norm_eps = 1e-5;    // rms_norm_eps (Llama family); 1e-5 for OPT's LayerNorm
  bool tie_word_embeddings = false;
  bool qkv_bias = false;     // bias on q/k/v projections (Qwen2; Llama attention_bias; OPT)
  bool o_bias = false;       // bias on the output projection (Llama attention_bias; OPT)
  bool mlp_bias = false;     // bias on MLP projections (Llama mlp_bias; OPT)
  RopeConfig rope;           // Llama family only
  // OPT only.
  int64_t word_embed_proj_dim = 0;  // != hidden_size means project_in/project_out exist
  int64_t position_offset = 2;      // learned positions are indexed at position + offset
  bool do_layer_norm_before = true; // kvscope supports the pre-LayerNorm variant only
  // Special tokens (-1 when absent).
  int32_t bos_token_id = -1;
  std::vector<int32_t> eos_token_ids;
  // Weight element type the checkpoint declares ("float32", "bfloat16", ...), informative.
  std::string torch_dtype;

  int64_t q_size() const { return num_heads * head_dim; }
  int64_t kv_size() const { return num_kv_heads * head_dim; }
  // Parameters implied by the shapes (embeddings counted once when tied).
  int64_t NumParameters() const;
};

// Parses config.json text. `source` (usually the file path) prefixes every error message,
// which names the offending field: InvalidArgument for malformed JSON, a missing or
// ill-typed field, or inconsistent sizes (e.g. hidden_size not divisible by heads);
// Unimplemented for an unsupported architecture or rope type (listing the supported ones).
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view source);

// Reads and parses DIR/config.json. NotFound (naming the path) if it is missing.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

// Frequencies for kernels::Rope: [rot_dim / 2] with the rope type's scaling applied, as
// transformers' ROPE_INIT_FUNCTIONS compute them (in float64, rounded to float32).
// `attention_scaling` receives the cos/sin scale factor (1.0 for the supported types).
std::vector<float> RopeInvFreq(const ModelConfig& config, float* attention_scaling);
int64_t RopeRotaryDim(const ModelConfig& config);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_MODEL_CONFIG_H_
