#include "engine/model_source.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/presets.h"

namespace kvscope::engine {

int64_t AvailableMemoryBytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t value;
  std::string unit;
  while (meminfo >> key >> value >> unit) {
    if (key == "MemAvailable:") return value * 1024;
  }
  return 0;
}

absl::StatusOr<LoadedModel> LoadModel(const std::string& spec, const ModelSourceOptions& options) {
  LoadedModel model;
  model.name = spec;
  if (absl::StartsWith(spec, "preset:")) {
    KVSCOPE_ASSIGN_OR_RETURN(ModelConfig config, PresetConfig(spec.substr(7)));
    int64_t limit = options.max_weight_bytes;
    if (limit == 0) limit = AvailableMemoryBytes() / 10 * 9;
    KVSCOPE_ASSIGN_OR_RETURN(ModelWeights weights,
                             SyntheticWeights(config, options.weights_seed, limit));
    model.weights = std::make_shared<ModelWeights>(std::move(weights));
    model.synthetic = true;
    return model;
  }
  if (!std::filesystem::is_directory(spec)) {
    return absl::NotFoundError(absl::StrCat(
        "model directory ", spec, " does not exist (pass a directory with config.json and "
        "model.safetensors, or preset:NAME; `kvscope presets` lists the presets)"));
  }
  KVSCOPE_ASSIGN_OR_RETURN(ModelWeights weights, LoadModelWeights(spec));
  model.weights = std::make_shared<ModelWeights>(std::move(weights));
  if (std::filesystem::exists(std::filesystem::path(spec) / "tokenizer.json")) {
    KVSCOPE_ASSIGN_OR_RETURN(model.tokenizer, Tokenizer::Load(spec));
  }
  return model;
}

}  // namespace kvscope::engine
