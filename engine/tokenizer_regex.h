// File: engine/tokenizer_regex.h
//
// PCRE2 regular expressions for tokenizer.json patterns (Split, Replace, the GPT-2
// ByteLevel pattern), compiled with PCRE2_UTF | PCRE2_UCP so that \p{L}, \s, \w and
// case-insensitive groups follow Unicode as Oniguruma does in Hugging Face tokenizers.
// Internal to the tokenizer library. Thread-safety: immutable after Compile; FindAll may
// run concurrently.
#ifndef KVSCOPE_ENGINE_TOKENIZER_REGEX_H_
#define KVSCOPE_ENGINE_TOKENIZER_REGEX_H_

#include <cstddef>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvscope::engine::tokenizer_internal {

class Regex {
 public:
  // Compiles `pattern` (a regex, or with `literal` a plain string to match verbatim).
  // InvalidArgument with PCRE2's message and offset when the pattern does not compile.
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern,
                                                        bool literal = false);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends to *matches the byte ranges [begin, end) of all non-overlapping matches in
  // `text` (valid UTF-8), left to right. After an empty match the search resumes one
  // character later. ResourceExhausted when a match exceeds PCRE2's backtracking limits.
  absl::Status FindAll(std::string_view text,
                       std::vector<std::pair<size_t, size_t>>* matches) const;

 private:
  explicit Regex(void* code) : code_(code) {}
  void* code_;  // pcre2_code_8*, owned
};

}  // namespace kvscope::engine::tokenizer_internal

#endif  // KVSCOPE_ENGINE_TOKENIZER_REGEX_H_
