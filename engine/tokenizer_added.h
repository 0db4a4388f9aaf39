// File: engine/tokenizer_added.h
//
// Added tokens (tokenizer.json "added_tokens") and their matching in text, as Hugging Face
// tokenizers' AddedVocabulary does it: leftmost-longest match, then the single_word,
// lstrip and rstrip rules. Internal to the tokenizer library.
#ifndef KVSCOPE_ENGINE_TOKENIZER_ADDED_H_
#define KVSCOPE_ENGINE_TOKENIZER_ADDED_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kvscope::engine::tokenizer_internal {

struct AddedToken {
  std::string content;  // the token's text
  int32_t id;
  bool special;      // dropped by Decode(skip_special_tokens = true)
  bool lstrip;       // a match also swallows the whitespace before it
  bool rstrip;       // a match also swallows the whitespace after it
  bool single_word;  // only matches when not inside a word
  bool normalized;   // matched in normalized text (else in the raw input)
};

// A set of added tokens to find in text. The tokens must outlive the matcher.
class AddedTokenMatcher {
 public:
  // Looks for `pattern` (the token's content, or its normalized form) standing for `token`.
  // Empty patterns are ignored.
  void Add(std::string pattern, const AddedToken* token);
  bool empty() const { return patterns_.empty(); }

  // A run of `text`: an added token (token != nullptr) or plain text between them.
  struct Segment {
    size_t begin;
    size_t end;
    const AddedToken* token;
  };
  // Cuts `text` (valid UTF-8) into segments in order; plain segments are never empty.
  std::vector<Segment> Split(std::string_view text) const;

 private:
  std::vector<std::pair<std::string, const AddedToken*>> patterns_;
  // Indices into patterns_ by first byte, longest pattern first.
  std::array<std::vector<size_t>, 256> by_first_byte_;
};

}  // namespace kvscope::engine::tokenizer_internal

#endif  // KVSCOPE_ENGINE_TOKENIZER_ADDED_H_
