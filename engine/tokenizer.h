// File: engine/tokenizer.h
//
// A tokenizer read from Hugging Face `tokenizer.json` (+ `tokenizer_config.json` for the
// BOS/EOS rule), covering the two BPE flavours of the supported models:
//   - SentencePiece-style BPE (Llama 2, TinyStories): "▁" for spaces, merges by rank,
//     byte fallback to <0xNN> tokens when the vocabulary has them;
//   - byte-level BPE (GPT-2, Llama 3, Qwen2): regex pre-tokenization, bytes mapped to
//     printable characters, merges by rank.
// Added/special tokens are matched in the text before normalization. Encoding then decoding
// reproduces Hugging Face transformers 5 (tokenizers) exactly on the tested cases.
// Thread-safety: immutable after loading; Encode/Decode may run concurrently.
#ifndef KVSCOPE_ENGINE_TOKENIZER_H_
#define KVSCOPE_ENGINE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kvscope::engine {

class Tokenizer {
 public:
  // Reads DIR/tokenizer.json and, if present, DIR/tokenizer_config.json. NotFound names a
  // missing tokenizer.json; InvalidArgument names the file and the field that is malformed
  // or unsupported.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& model_dir);
  // Same from texts; `config_json` may be empty. `source` prefixes error messages.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view tokenizer_json,
                                                              std::string_view config_json,
                                                              std::string_view source);

  ~Tokenizer();

  // Text -> ids. With add_special_tokens, applies the post-processor / BOS rule (e.g. a
  // leading BOS for Llama). Invalid UTF-8 is an InvalidArgument error naming the byte offset.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              bool add_special_tokens = true) const;
  // Ids -> text. InvalidArgument names the first id outside the vocabulary.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_special_tokens = true) const;

  // Vocabulary size including added tokens (max id + 1).
  int32_t vocab_size() const;
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  // The token's string in the vocabulary ("" if out of range).
  std::string TokenString(int32_t id) const;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_TOKENIZER_H_
