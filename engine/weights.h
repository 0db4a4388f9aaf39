// File: engine/weights.h
//
// Model weights as float32 views, loaded from a checkpoint directory (memory-mapped
// safetensors) or generated from a seed for a synthetic preset.
//
// Memory: float32 tensors whose file offset is 4-byte aligned are used in place from the
// read-only memory map (no copy). BF16/F16 tensors are converted once into owned float32
// buffers; their mapped pages are then released (madvise), so the process never holds two
// full copies of the weights. All views stay valid while the ModelWeights object lives.
// Thread-safety: immutable after construction; safe to read from many threads.
#ifndef KVSCOPE_ENGINE_WEIGHTS_H_
#define KVSCOPE_ENGINE_WEIGHTS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/mapped_file.h"
#include "engine/model_config.h"

namespace kvscope::engine {

// A read-only float32 matrix [rows, cols] (a vector is [1, cols]); row stride == cols.
struct WeightView {
  const float* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  bool empty() const { return data == nullptr; }
};

// One decoder layer. Shapes follow PyTorch ([out_features, in_features]). Optional
// tensors (biases) are empty when the architecture has none.
struct LayerWeights {
  WeightView attn_norm;       // Llama: input_layernorm [1, hidden]; OPT: self_attn_layer_norm
  WeightView attn_norm_bias;  // OPT only
  WeightView q, k, v, o;      // [q_size, hidden], [kv_size, hidden] x2, [hidden, q_size]
  WeightView q_bias, k_bias, v_bias, o_bias;
  WeightView mlp_norm;        // Llama: post_attention_layernorm; OPT: final_layer_norm
  WeightView mlp_norm_bias;   // OPT only
  WeightView gate;            // Llama: gate_proj [intermediate, hidden]; OPT: empty
  WeightView up;              // Llama: up_proj [intermediate, hidden]; OPT: fc1
  WeightView down;            // Llama: down_proj [hidden, intermediate]; OPT: fc2
  WeightView gate_bias, up_bias, down_bias;
};

struct ModelWeights {
  ModelConfig config;
  WeightView embed;            // [vocab, embed_dim] (OPT: embed_dim = word_embed_proj_dim)
  WeightView positions;        // OPT: [max_position_embeddings + offset, hidden]
  WeightView project_in;       // OPT: [hidden, word_embed_proj_dim] or empty
  WeightView project_out;      // OPT: [word_embed_proj_dim, hidden] or empty
  std::vector<LayerWeights> layers;
  WeightView final_norm;       // Llama: model.norm; OPT: decoder.final_layer_norm
  WeightView final_norm_bias;  // OPT only
  WeightView lm_head;          // [vocab, embed_dim]; == embed when tied

  // Owned storage behind the views (converted or generated buffers, mapped files).
  std::vector<std::unique_ptr<float[]>> owned;
  std::vector<std::shared_ptr<MappedFile>> mapped;
  // Bytes of float32 weights reachable through the views (tied tensors counted once).
  int64_t total_bytes = 0;
};

// Loads config.json and the safetensors weights from a model directory
// (`model.safetensors`, or shards listed by `model.safetensors.index.json`). Every error
// names the file and the tensor or field: NotFound for a missing directory, file or tensor;
// InvalidArgument for a shape or dtype that disagrees with the config or a corrupt file.
absl::StatusOr<ModelWeights> LoadModelWeights(const std::string& model_dir);

// Builds weights for `config` filled with seeded random values (uniform in ±1/sqrt(fan_in)
// for matrices, 1 for norm weights, 0 for norm biases, small values for other biases).
// The same (config, seed) gives the same bits on every machine and thread count.
// ResourceExhausted if the float32 weights would exceed `max_bytes` (0 = no limit).
absl::StatusOr<ModelWeights> SyntheticWeights(const ModelConfig& config, uint64_t seed,
                                              int64_t max_bytes = 0);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_WEIGHTS_H_
