// File: engine/checkpoint.h
//
// The tensors of a Hugging Face model directory, across one or more safetensors files:
//   DIR/model.safetensors                      (a single file; preferred when present), or
//   DIR/model.safetensors.index.json           ({"weight_map": {tensor name: shard file}})
//   + the shard files it names.
// Every shard must exist and hold every tensor the index assigns to it.
//
// Thread-safety: immutable after Open(); safe to share.
#ifndef KVSCOPE_ENGINE_CHECKPOINT_H_
#define KVSCOPE_ENGINE_CHECKPOINT_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/safetensors.h"

namespace kvscope::engine {

// Where one tensor lives.
struct CheckpointTensor {
  const SafetensorsFile* file = nullptr;      // owned by the Checkpoint
  const SafetensorsTensor* tensor = nullptr;  // entry of `file`'s header
};

class Checkpoint {
 public:
  // NotFound "model directory DIR does not exist" for a missing directory; NotFound naming
  // DIR/model.safetensors when neither weight layout is present, or a missing shard (and the
  // index); NotFound for a tensor the index lists but its shard lacks; InvalidArgument for a
  // corrupt index or safetensors file.
  static absl::StatusOr<Checkpoint> Open(const std::string& model_dir);

  // The file errors should name: the single safetensors file, or the index.
  const std::string& source() const { return source_; }
  // nullptr when no file holds `name`.
  const CheckpointTensor* Find(std::string_view name) const;
  // Tensor names, sorted.
  std::vector<std::string> TensorNames() const;
  // Every safetensors file of the checkpoint (one, or each shard once).
  const std::vector<std::shared_ptr<const SafetensorsFile>>& files() const { return files_; }

 private:
  std::string source_;
  std::vector<std::shared_ptr<const SafetensorsFile>> files_;
  std::map<std::string, CheckpointTensor, std::less<>> tensors_;
};

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_CHECKPOINT_H_
