// File: engine/tokenizer_post.h
//
// tokenizer.json "post_processor" for single sequences: TemplateProcessing, ByteLevel
// (offsets only, so a no-op for ids), BertProcessing / RobertaProcessing, Sequence. Each
// reduces to special-token ids placed before and after the encoded text. Internal to the
// tokenizer library.
#ifndef KVSCOPE_ENGINE_TOKENIZER_POST_H_
#define KVSCOPE_ENGINE_TOKENIZER_POST_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tokenizer_json.h"

namespace kvscope::engine::tokenizer_internal {

// Encoding with special tokens = prefix + ids + suffix.
struct SpecialTokenFrame {
  std::vector<int32_t> prefix;
  std::vector<int32_t> suffix;
};

// Parses a post_processor object at `at`; JSON null gives an empty frame.
absl::StatusOr<SpecialTokenFrame> ParsePostProcessor(const Json& j, const JsonPath& at,
                                                     int depth = 0);

}  // namespace kvscope::engine::tokenizer_internal

#endif  // KVSCOPE_ENGINE_TOKENIZER_POST_H_
