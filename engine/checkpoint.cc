// File: engine/checkpoint.cc
#include "engine/checkpoint.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvscope::engine {
namespace {

using json = nlohmann::json;

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// A shard name must stay inside the model directory.
bool SafeShardName(const std::string& name) {
  if (name.empty() || name.front() == '/') return false;
  size_t start = 0;
  while (start <= name.size()) {
    size_t slash = name.find('/', start);
    if (slash == std::string::npos) slash = name.size();
    std::string_view part(name.data() + start, slash - start);
    if (part.empty() || part == "." || part == "..") return false;
    start = slash + 1;
  }
  return true;
}

// Parses the index into name -> shard file name.
absl::StatusOr<std::map<std::string, std::string>> ReadIndex(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream text;
  text << in.rdbuf();
  json root;
  try {
    root = json::parse(text.str());
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": malformed JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected a JSON object"));
  }
  auto map = root.find("weight_map");
  if (map == root.end() || !map->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": missing field 'weight_map' (an object: tensor name -> shard file)"));
  }
  std::map<std::string, std::string> out;
  for (auto it = map->begin(); it != map->end(); ++it) {
    if (!it.value().is_string() || !SafeShardName(it.value().get<std::string>())) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": weight_map entry for tensor ", it.key(),
                       " must be a shard file name inside the model directory"));
    }
    out.emplace(it.key(), it.value().get<std::string>());
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": 'weight_map' is empty"));
  }
  return out;
}

}  // namespace

absl::StatusOr<Checkpoint> Checkpoint::Open(const std::string& model_dir) {
  if (!IsDirectory(model_dir)) {
    return absl::NotFoundError(absl::StrCat("model directory ", model_dir, " does not exist"));
  }
  Checkpoint ckpt;
  const std::string single = model_dir + "/" + kSingleFile;
  const std::string index = model_dir + "/" + kIndexFile;
  if (Exists(single)) {
    KVSCOPE_ASSIGN_OR_RETURN(std::shared_ptr<const SafetensorsFile> file,
                             SafetensorsFile::Open(single));
    ckpt.source_ = single;
    for (const SafetensorsTensor& t : file->tensors()) {
      ckpt.tensors_.emplace(t.name, CheckpointTensor{file.get(), &t});
    }
    ckpt.files_.push_back(std::move(file));
    return ckpt;
  }
  if (!Exists(index)) {
    return absl::NotFoundError(absl::StrCat(single, ": no such file (nor ", kIndexFile,
                                            "); kvscope reads safetensors checkpoints"));
  }
  ckpt.source_ = index;
  KVSCOPE_ASSIGN_OR_RETURN(auto weight_map, ReadIndex(index));
  std::map<std::string, const SafetensorsFile*> shards;
  for (const auto& [name, shard] : weight_map) {
    if (shards.count(shard) != 0) continue;
    const std::string shard_path = model_dir + "/" + shard;
    if (!Exists(shard_path)) {
      return absl::NotFoundError(absl::StrCat(shard_path, ": no such file (a shard listed in ",
                                              index, ", e.g. for tensor ", name, ")"));
    }
    KVSCOPE_ASSIGN_OR_RETURN(std::shared_ptr<const SafetensorsFile> file,
                             SafetensorsFile::Open(shard_path));
    shards.emplace(shard, file.get());
    ckpt.files_.push_back(std::move(file));
  }
  for (const auto& [name, shard] : weight_map) {
    const SafetensorsFile* file = shards.at(shard);
    const SafetensorsTensor* t = file->Find(name);
    if (t == nullptr) {
      return absl::NotFoundError(absl::StrCat(index, ": tensor ", name, " is assigned to ", shard,
                                              ", but ", file->path(), " has no such tensor"));
    }
    ckpt.tensors_.emplace(name, CheckpointTensor{file, t});
  }
  return ckpt;
}

const CheckpointTensor* Checkpoint::Find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, t] : tensors_) names.push_back(name);
  return names;
}

}  // namespace kvscope::engine
