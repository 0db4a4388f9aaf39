// File: engine/model_source.h
//
// Resolves the `--model` argument every subcommand takes: a model directory as users
// download it (config.json, safetensors, tokenizer.json), or `preset:NAME` for a synthetic
// model with seeded random weights and no tokenizer.
#ifndef KVSCOPE_ENGINE_MODEL_SOURCE_H_
#define KVSCOPE_ENGINE_MODEL_SOURCE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/tokenizer.h"
#include "engine/weights.h"

namespace kvscope::engine {

struct LoadedModel {
  std::shared_ptr<const ModelWeights> weights;
  std::unique_ptr<Tokenizer> tokenizer;  // null for presets and directories without one
  std::string name;                      // the directory or "preset:NAME"
  bool synthetic = false;
};

struct ModelSourceOptions {
  uint64_t weights_seed = 0;  // presets only
  // Refuse synthetic weights above this many bytes (0 = 90% of available memory).
  int64_t max_weight_bytes = 0;
};

absl::StatusOr<LoadedModel> LoadModel(const std::string& spec, const ModelSourceOptions& options);

// MemAvailable from /proc/meminfo in bytes (0 if unknown).
int64_t AvailableMemoryBytes();

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_MODEL_SOURCE_H_
