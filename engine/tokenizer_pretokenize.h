// File: engine/tokenizer_pretokenize.h
//
// tokenizer.json "pre_tokenizer" components: Sequence, Metaspace, ByteLevel, Split, Digits,
// Whitespace, WhitespaceSplit. A pre-tokenizer cuts normalized text into pieces that the
// model encodes independently. Internal to the tokenizer library.
#ifndef KVSCOPE_ENGINE_TOKENIZER_PRETOKENIZE_H_
#define KVSCOPE_ENGINE_TOKENIZER_PRETOKENIZE_H_

#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/tokenizer_json.h"

namespace kvscope::engine::tokenizer_internal {

// A piece of normalized text on its way to the model.
struct Piece {
  std::string text;  // valid UTF-8, never empty after a pre-tokenizer ran
  bool at_start;     // begins at byte 0 of the input text (Metaspace prepend_scheme "first")
};

// tokenizers' SplitDelimiterBehavior: what happens to a matched delimiter.
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Cuts [0, text_size) at the given match ranges (sorted, as Regex::FindAll returns them;
// with `invert`, the gaps are the delimiters) and returns the kept, non-empty pieces as
// [begin, end) byte ranges, exactly as tokenizers' NormalizedString::split does.
std::vector<std::pair<size_t, size_t>> SplitByMatches(
    size_t text_size, const std::vector<std::pair<size_t, size_t>>& matches, SplitBehavior behavior,
    bool invert);

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces *pieces by their pre-tokenized pieces, dropping empty ones.
  virtual absl::Status PreTokenize(std::vector<Piece>* pieces) const = 0;
};

// Parses a pre_tokenizer object at `at`. JSON null gives nullptr (the whole text is one
// piece). `depth` counts enclosing Sequences.
absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const Json& j, const JsonPath& at,
                                                                int depth = 0);

}  // namespace kvscope::engine::tokenizer_internal

#endif  // KVSCOPE_ENGINE_TOKENIZER_PRETOKENIZE_H_
