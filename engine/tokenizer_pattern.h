// File: engine/tokenizer_pattern.h
//
// The {"String": s} / {"Regex": r} pattern objects of tokenizer.json (Replace, Split), and
// the Replace operation shared by the Replace normalizer and decoder. Internal to the
// tokenizer library.
#ifndef KVSCOPE_ENGINE_TOKENIZER_PATTERN_H_
#define KVSCOPE_ENGINE_TOKENIZER_PATTERN_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/tokenizer_json.h"
#include "engine/tokenizer_regex.h"

namespace kvscope::engine::tokenizer_internal {

// Compiles the pattern object `j` (at path `at`): a String pattern matches verbatim, a
// Regex pattern is a PCRE2 regex. An empty String pattern is an error.
absl::StatusOr<std::unique_ptr<Regex>> ParsePattern(const Json& j, const JsonPath& at);

// Replaces every non-overlapping match of `pattern` in `text` by `content`.
absl::Status ReplaceAll(const Regex& pattern, std::string_view content, std::string* text);

}  // namespace kvscope::engine::tokenizer_internal

#endif  // KVSCOPE_ENGINE_TOKENIZER_PATTERN_H_
