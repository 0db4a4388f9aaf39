// File: engine/tokenizer_config.h
//
// The fields of transformers' tokenizer_config.json that change encoding or decoding.
// Internal to the tokenizer library.
#ifndef KVSCOPE_ENGINE_TOKENIZER_CONFIG_H_
#define KVSCOPE_ENGINE_TOKENIZER_CONFIG_H_

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace kvscope::engine::tokenizer_internal {

struct TokenizerConfig {
  std::optional<bool> add_bos_token;          // prepend bos_token when there is no post_processor
  std::optional<bool> add_eos_token;          // append eos_token when there is no post_processor
  std::optional<std::string> bos_token;       // content of the BOS token
  std::optional<std::string> eos_token;       // content of the EOS token
  std::string tokenizer_class;                // e.g. "LlamaTokenizer"; "" when absent
  std::optional<bool> legacy;                 // Llama: prepend scheme "always" (true) or "first"
  std::optional<bool> add_prefix_space;       // Llama: prepend "▁" at all
  bool clean_up_tokenization_spaces = false;  // transformers' clean_up_tokenization on decode
};

// Parses tokenizer_config.json text; every other field is ignored. Token fields may be a
// string or an {"content": ...} object. InvalidArgument names `source` and the field.
absl::StatusOr<TokenizerConfig> ParseTokenizerConfig(std::string_view text,
                                                     std::string_view source);

}  // namespace kvscope::engine::tokenizer_internal

#endif  // KVSCOPE_ENGINE_TOKENIZER_CONFIG_H_
