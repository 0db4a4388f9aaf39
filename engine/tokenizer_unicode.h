// File: engine/tokenizer_unicode.h
//
// UTF-8 and Unicode helpers for the tokenizer: strict UTF-8 validation, code point
// iteration, Unicode lowercase, an NFC check, whitespace, the GPT-2 byte <-> character
// table and Rust-compatible lossy UTF-8 decoding. Internal to the tokenizer library.
#ifndef KVSCOPE_ENGINE_TOKENIZER_UNICODE_H_
#define KVSCOPE_ENGINE_TOKENIZER_UNICODE_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace kvscope::engine::tokenizer_internal {

// Inclusive code point range.
struct CodePointRange {
  char32_t first;
  char32_t last;
};
// Code points first, first + stride, ..., last lowercase to cp + delta.
struct LowerRun {
  char32_t first;
  char32_t last;
  int32_t delta;
  int32_t stride;
};
// Generated tables (tokenizer_unicode_tables.cc), sorted by `first`.
extern const CodePointRange kNfcUnsafe[];
extern const int kNfcUnsafeSize;
extern const LowerRun kLowerRuns[];
extern const int kLowerRunsSize;

// Strict UTF-8 (no overlong forms, surrogates or values above U+10FFFF): OK, or
// InvalidArgument "invalid UTF-8 at byte offset N".
absl::Status ValidateUtf8(std::string_view text);

// Decodes the code point starting at text[*pos] and advances *pos past it. `text` must be
// valid UTF-8 and *pos < text.size().
char32_t NextCodePoint(std::string_view text, size_t* pos);

// Appends the UTF-8 encoding of `cp` (a valid scalar value).
void AppendUtf8(char32_t cp, std::string* out);

// Unicode White_Space (what Rust's char::is_whitespace tests).
bool IsWhitespace(char32_t cp);

// Unicode lowercase of valid UTF-8 `text` (what Rust's str::to_lowercase gives, with the
// final-sigma rule approximated by "preceded by a cased letter, not followed by one").
std::string ToLower(std::string_view text);

// Byte offset of the first character of valid UTF-8 `text` that might change under NFC
// (decompose, reorder or compose), or npos when there is none, i.e. `text` is certainly
// in NFC.
size_t FirstNfcUnsafe(std::string_view text);

// GPT-2 bytes_to_unicode: the printable character (as UTF-8) that stands for byte b.
const std::array<std::string, 256>& ByteLevelAlphabet();
// Inverse of ByteLevelAlphabet: the byte for code point cp, or -1.
int ByteLevelByte(char32_t cp);

// Rust's String::from_utf8_lossy: each maximal invalid subsequence becomes U+FFFD.
std::string Utf8Lossy(std::string_view bytes);

}  // namespace kvscope::engine::tokenizer_internal

#endif  // KVSCOPE_ENGINE_TOKENIZER_UNICODE_H_
