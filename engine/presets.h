// File: engine/presets.h
//
// Named synthetic models: the exact shapes of real checkpoints (or small ones for CPUs),
// used with seeded random weights the way serving benchmarks run a model whose checkpoint
// is not at hand. A preset needs no file. `--model preset:NAME` selects one.
#ifndef KVSCOPE_ENGINE_PRESETS_H_
#define KVSCOPE_ENGINE_PRESETS_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_config.h"

namespace kvscope::engine {

struct Preset {
  std::string name;         // e.g. "llama-2-7b"
  std::string description;  // one line, e.g. "Llama 2 7B shapes (32 layers, MHA)"
  ModelConfig config;
};

// All presets, in a stable order.
const std::vector<Preset>& AllPresets();

// NotFound listing every preset name when `name` is unknown.
absl::StatusOr<ModelConfig> PresetConfig(std::string_view name);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_PRESETS_H_
