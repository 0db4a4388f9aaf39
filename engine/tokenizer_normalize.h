// File: engine/tokenizer_normalize.h
//
// tokenizer.json "normalizer" components: Sequence, Prepend, Replace (String or Regex
// pattern), NFC, Lowercase, Strip. Internal to the tokenizer library.
//
// NFC is implemented only as a check: text in which no character can decompose, reorder or
// compose (all ASCII, precomposed Latin/Greek/Cyrillic, CJK, emoji, ...) is returned
// unchanged; other text is an Unimplemented error naming the byte offset.
#ifndef KVSCOPE_ENGINE_TOKENIZER_NORMALIZE_H_
#define KVSCOPE_ENGINE_TOKENIZER_NORMALIZE_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/tokenizer_json.h"

namespace kvscope::engine::tokenizer_internal {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Rewrites `text` (valid UTF-8) in place; the result is valid UTF-8.
  virtual absl::Status Normalize(std::string* text) const = 0;
};

// Parses a normalizer object at `at`. A JSON null gives nullptr (no normalization).
// `depth` counts enclosing Sequences.
absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const Json& j, const JsonPath& at,
                                                            int depth = 0);

}  // namespace kvscope::engine::tokenizer_internal

#endif  // KVSCOPE_ENGINE_TOKENIZER_NORMALIZE_H_
