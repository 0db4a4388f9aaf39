// File: engine/tokenizer_bpe.h
//
// The BPE model of tokenizer.json ("model": {"type": "BPE", ...}): vocabulary, ranked
// merges, unk_token (+ fuse_unk), byte_fallback to <0xNN> tokens, ignore_merges,
// continuing_subword_prefix and end_of_word_suffix. Merging follows Hugging Face
// tokenizers exactly: repeatedly apply the lowest-ranked merge, leftmost first, in
// O(n log n) per word. Internal to the tokenizer library. Immutable after Parse.
#ifndef KVSCOPE_ENGINE_TOKENIZER_BPE_H_
#define KVSCOPE_ENGINE_TOKENIZER_BPE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/tokenizer_json.h"

namespace kvscope::engine::tokenizer_internal {

class BpeModel {
 public:
  // Parses the "model" object at `at`. Every merge's parts and result must be in the vocab.
  static absl::StatusOr<std::unique_ptr<BpeModel>> Parse(const Json& j, const JsonPath& at);

  // Appends the ids of `word` (valid UTF-8) to *ids. Characters that are neither in the
  // vocabulary nor byte-fallback-able become unk_token (fused when fuse_unk), or are
  // dropped when there is no unk_token.
  void Tokenize(std::string_view word, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The token for `id`, or nullptr.
  const std::string* IdToToken(int32_t id) const;
  // Largest id in the vocabulary, or -1 if it is empty.
  int32_t max_id() const { return max_id_; }

  // The options transformers 5's LlamaTokenizer gives its BPE: no unk_token (unknown
  // characters vanish), fuse_unk, byte_fallback, no ignore_merges. See tokenizer.cc.
  void UseTransformersLlamaOptions() {
    unk_id_.reset();
    fuse_unk_ = true;
    byte_fallback_ = true;
    ignore_merges_ = false;
  }

 private:
  BpeModel() = default;
  // Applies the merges to the symbol ids of one word, in place.
  void MergeAll(std::vector<int32_t>* symbols) const;

  struct Merge {
    int32_t rank;    // position in the merges list; lower merges first
    int32_t new_id;  // id of the merged token
  };
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  absl::flat_hash_map<std::string, int32_t> vocab_;    // token -> id
  absl::flat_hash_map<int32_t, std::string> vocab_r_;  // id -> token
  absl::flat_hash_map<uint64_t, Merge> merges_;        // (left id, right id) -> merge
  std::optional<int32_t> unk_id_;                      // id of unk_token, if any
  std::optional<std::string> prefix_;                  // continuing_subword_prefix
  std::optional<std::string> suffix_;                  // end_of_word_suffix
  std::vector<int32_t> byte_ids_;                      // id of <0xNN> per byte, or -1
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  int32_t max_id_ = -1;
};

}  // namespace kvscope::engine::tokenizer_internal

#endif  // KVSCOPE_ENGINE_TOKENIZER_BPE_H_
