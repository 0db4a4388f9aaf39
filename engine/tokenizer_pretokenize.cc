// File: engine/tokenizer_pretokenize.cc
#include "engine/tokenizer_pretokenize.h"

#include <algorithm>
#include <functional>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "engine/tokenizer_pattern.h"
#include "engine/tokenizer_regex.h"
#include "engine/tokenizer_unicode.h"

namespace kvscope::engine::tokenizer_internal {
namespace {

// The GPT-2 pre-tokenization pattern used by ByteLevel(use_regex = true).
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

using Ranges = std::vector<std::pair<size_t, size_t>>;

// Applies `split` to every piece, replacing it with the non-empty pieces it returns.
absl::Status SplitEach(std::vector<Piece>* pieces,
                       const std::function<absl::Status(Piece&, std::vector<Piece>*)>& split) {
  std::vector<Piece> out;
  out.reserve(pieces->size());
  for (Piece& piece : *pieces) {
    absl::Status status = split(piece, &out);
    if (!status.ok()) return status;
  }
  out.erase(std::remove_if(out.begin(), out.end(), [](const Piece& p) { return p.text.empty(); }),
            out.end());
  *pieces = std::move(out);
  return absl::OkStatus();
}

// Appends the sub-pieces of `piece` given by byte ranges into its text.
void AppendRanges(const Piece& piece, const Ranges& ranges, std::vector<Piece>* out) {
  for (const auto& [begin, end] : ranges) {
    out->push_back(Piece{piece.text.substr(begin, end - begin), piece.at_start && begin == 0});
  }
}

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts)
      : parts_(std::move(parts)) {}
  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    for (const auto& part : parts_) {
      absl::Status status = part->PreTokenize(pieces);
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;  // applied in order
};

enum class PrependScheme { kAlways, kFirst, kNever };

// Replaces ' ' by the replacement character, prepends it per the scheme (never twice), and
// optionally splits before each replacement character.
class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split,
                        std::unique_ptr<Regex> replacement_regex)
      : replacement_(std::move(replacement)),
        scheme_(scheme),
        split_(split),
        replacement_regex_(std::move(replacement_regex)) {}
  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    return SplitEach(pieces, [this](Piece& piece, std::vector<Piece>* out) -> absl::Status {
      absl::StrReplaceAll({{" ", replacement_}}, &piece.text);
      bool starts = piece.text.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts && (scheme_ == PrependScheme::kAlways ||
                      (scheme_ == PrependScheme::kFirst && piece.at_start))) {
        piece.text.insert(0, replacement_);
      }
      if (!split_) {
        out->push_back(std::move(piece));
        return absl::OkStatus();
      }
      Ranges matches;
      absl::Status status = replacement_regex_->FindAll(piece.text, &matches);
      if (!status.ok()) return status;
      AppendRanges(
          piece, SplitByMatches(piece.text.size(), matches, SplitBehavior::kMergedWithNext, false),
          out);
      return absl::OkStatus();
    });
  }

 private:
  std::string replacement_;  // one character, UTF-8
  PrependScheme scheme_;
  bool split_;                                // split before each replacement character
  std::unique_ptr<Regex> replacement_regex_;  // matches replacement_ literally
};

// Maps every byte to its printable stand-in, after an optional GPT-2 regex split and
// optional leading space.
class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    const auto& alphabet = ByteLevelAlphabet();
    return SplitEach(pieces, [&](Piece& piece, std::vector<Piece>* out) -> absl::Status {
      if (add_prefix_space_ && (piece.text.empty() || piece.text[0] != ' ')) {
        piece.text.insert(0, " ");
      }
      Ranges ranges;
      if (regex_ != nullptr) {
        Ranges matches;
        absl::Status status = regex_->FindAll(piece.text, &matches);
        if (!status.ok()) return status;
        ranges = SplitByMatches(piece.text.size(), matches, SplitBehavior::kIsolated, false);
      } else {
        ranges.emplace_back(0, piece.text.size());
      }
      for (const auto& [begin, end] : ranges) {
        Piece mapped{std::string(), piece.at_start && begin == 0};
        for (size_t i = begin; i < end; ++i) {
          mapped.text += alphabet[static_cast<unsigned char>(piece.text[i])];
        }
        out->push_back(std::move(mapped));
      }
      return absl::OkStatus();
    });
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;  // GPT-2 pattern, or nullptr for use_regex = false
};

// Split, Digits, Whitespace and WhitespaceSplit: a regex and a delimiter behavior.
class RegexSplitPreTokenizer : public PreTokenizer {
 public:
  RegexSplitPreTokenizer(std::unique_ptr<Regex> regex, SplitBehavior behavior, bool invert)
      : regex_(std::move(regex)), behavior_(behavior), invert_(invert) {}
  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    return SplitEach(pieces, [this](Piece& piece, std::vector<Piece>* out) -> absl::Status {
      Ranges matches;
      absl::Status status = regex_->FindAll(piece.text, &matches);
      if (!status.ok()) return status;
      AppendRanges(piece, SplitByMatches(piece.text.size(), matches, behavior_, invert_), out);
      return absl::OkStatus();
    });
  }

 private:
  std::unique_ptr<Regex> regex_;
  SplitBehavior behavior_;
  bool invert_;  // the gaps between matches are the delimiters
};

absl::StatusOr<std::unique_ptr<Regex>> CompileBuiltin(std::string_view pattern,
                                                      const JsonPath& at) {
  absl::StatusOr<std::unique_ptr<Regex>> regex = Regex::Compile(pattern);
  if (!regex.ok()) return at.Error(regex.status().message());
  return regex;
}

absl::StatusOr<SplitBehavior> ParseBehavior(const Json& j, const JsonPath& at) {
  absl::StatusOr<std::string> name = RequireString(j, "behavior", at);
  if (!name.ok()) return name.status();
  if (*name == "Removed") return SplitBehavior::kRemoved;
  if (*name == "Isolated") return SplitBehavior::kIsolated;
  if (*name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (*name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (*name == "Contiguous") return SplitBehavior::kContiguous;
  return at.Field("behavior").Error(absl::StrCat("unknown behavior ", Quote(*name)));
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParseMetaspace(const Json& j, const JsonPath& at) {
  absl::StatusOr<std::string> replacement = RequireChar(j, "replacement", at);
  if (!replacement.ok()) return replacement.status();
  PrependScheme scheme = PrependScheme::kAlways;
  absl::StatusOr<std::optional<std::string>> name = OptionalString(j, "prepend_scheme", at);
  if (!name.ok()) return name.status();
  if (name->has_value()) {
    if (**name == "always") {
      scheme = PrependScheme::kAlways;
    } else if (**name == "first") {
      scheme = PrependScheme::kFirst;
    } else if (**name == "never") {
      scheme = PrependScheme::kNever;
    } else {
      return at.Field("prepend_scheme").Error(absl::StrCat("unknown scheme ", Quote(**name)));
    }
  } else {
    // Files older than prepend_scheme carry add_prefix_space instead.
    absl::StatusOr<bool> add = GetBool(j, "add_prefix_space", at, true);
    if (!add.ok()) return add.status();
    scheme = *add ? PrependScheme::kAlways : PrependScheme::kNever;
  }
  absl::StatusOr<bool> split = GetBool(j, "split", at, true);
  if (!split.ok()) return split.status();
  absl::StatusOr<std::unique_ptr<Regex>> regex = Regex::Compile(*replacement, /*literal=*/true);
  if (!regex.ok()) return at.Field("replacement").Error(regex.status().message());
  return std::unique_ptr<PreTokenizer>(
      new MetaspacePreTokenizer(*std::move(replacement), scheme, *split, *std::move(regex)));
}

}  // namespace

std::vector<std::pair<size_t, size_t>> SplitByMatches(size_t text_size, const Ranges& matches,
                                                      SplitBehavior behavior, bool invert) {
  // (begin, end, is_match) covering [0, text_size).
  std::vector<std::tuple<size_t, size_t, bool>> parts;
  size_t prev = 0;
  for (const auto& [begin, end] : matches) {
    if (begin < prev || end > text_size) continue;
    if (prev < begin) parts.emplace_back(prev, begin, false);
    parts.emplace_back(begin, end, true);
    prev = end;
  }
  if (prev < text_size) parts.emplace_back(prev, text_size, false);
  if (invert) {
    for (auto& part : parts) std::get<2>(part) = !std::get<2>(part);
  }
  // (begin, end, remove)
  std::vector<std::tuple<size_t, size_t, bool>> splits;
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      splits = parts;
      break;
    case SplitBehavior::kIsolated:
      for (const auto& [b, e, m] : parts) splits.emplace_back(b, e, false);
      break;
    case SplitBehavior::kContiguous:
      for (const auto& [b, e, m] : parts) {
        if (m == previous_match && !splits.empty()) {
          std::get<1>(splits.back()) = e;
        } else {
          splits.emplace_back(b, e, false);
        }
        previous_match = m;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const auto& [b, e, m] : parts) {
        if (m && !previous_match && !splits.empty()) {
          std::get<1>(splits.back()) = e;
        } else {
          splits.emplace_back(b, e, false);
        }
        previous_match = m;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        const auto& [b, e, m] = *it;
        if (m && !previous_match && !splits.empty()) {
          std::get<0>(splits.back()) = b;
        } else {
          splits.emplace_back(b, e, false);
        }
        previous_match = m;
      }
      std::reverse(splits.begin(), splits.end());
      break;
  }
  Ranges out;
  for (const auto& [b, e, remove] : splits) {
    if (!remove && e > b) out.emplace_back(b, e);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const Json& j, const JsonPath& at,
                                                                int depth) {
  if (j.is_null()) return std::unique_ptr<PreTokenizer>();
  if (depth > kMaxComponentDepth) return at.Error("Sequence nesting too deep");
  absl::StatusOr<std::string> type = RequireType(j, at);
  if (!type.ok()) return type.status();
  if (*type == "Sequence") {
    const Json* list = FindField(j, "pretokenizers");
    if (list == nullptr || !list->is_array()) {
      return at.Field("pretokenizers").Error("expected an array");
    }
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (size_t i = 0; i < list->size(); ++i) {
      JsonPath item_at = at.Field("pretokenizers").Index(i);
      if ((*list)[i].is_null()) return item_at.Error("expected a pre_tokenizer object");
      absl::StatusOr<std::unique_ptr<PreTokenizer>> part =
          ParsePreTokenizer((*list)[i], item_at, depth + 1);
      if (!part.ok()) return part.status();
      parts.push_back(*std::move(part));
    }
    return std::unique_ptr<PreTokenizer>(new SequencePreTokenizer(std::move(parts)));
  }
  if (*type == "Metaspace") return ParseMetaspace(j, at);
  if (*type == "ByteLevel") {
    absl::StatusOr<bool> add_prefix_space = GetBool(j, "add_prefix_space", at, true);
    if (!add_prefix_space.ok()) return add_prefix_space.status();
    absl::StatusOr<bool> use_regex = GetBool(j, "use_regex", at, true);
    if (!use_regex.ok()) return use_regex.status();
    absl::StatusOr<bool> trim_offsets = GetBool(j, "trim_offsets", at, true);  // offsets only
    if (!trim_offsets.ok()) return trim_offsets.status();
    std::unique_ptr<Regex> regex;
    if (*use_regex) {
      absl::StatusOr<std::unique_ptr<Regex>> compiled = CompileBuiltin(kGpt2Pattern, at);
      if (!compiled.ok()) return compiled.status();
      regex = *std::move(compiled);
    }
    return std::unique_ptr<PreTokenizer>(
        new ByteLevelPreTokenizer(*add_prefix_space, std::move(regex)));
  }
  if (*type == "Split") {
    const Json* pattern = FindField(j, "pattern");
    if (pattern == nullptr) return at.Field("pattern").Error("missing");
    absl::StatusOr<std::unique_ptr<Regex>> regex = ParsePattern(*pattern, at.Field("pattern"));
    if (!regex.ok()) return regex.status();
    absl::StatusOr<SplitBehavior> behavior = ParseBehavior(j, at);
    if (!behavior.ok()) return behavior.status();
    absl::StatusOr<bool> invert = GetBool(j, "invert", at, false);
    if (!invert.ok()) return invert.status();
    return std::unique_ptr<PreTokenizer>(
        new RegexSplitPreTokenizer(*std::move(regex), *behavior, *invert));
  }
  if (*type == "Digits") {
    absl::StatusOr<bool> individual = GetBool(j, "individual_digits", at, false);
    if (!individual.ok()) return individual.status();
    absl::StatusOr<std::unique_ptr<Regex>> regex = CompileBuiltin(R"(\p{N})", at);
    if (!regex.ok()) return regex.status();
    return std::unique_ptr<PreTokenizer>(new RegexSplitPreTokenizer(
        *std::move(regex), *individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous,
        false));
  }
  if (*type == "Whitespace") {  // keeps runs of word characters and of punctuation
    absl::StatusOr<std::unique_ptr<Regex>> regex = CompileBuiltin(R"(\w+|[^\w\s]+)", at);
    if (!regex.ok()) return regex.status();
    return std::unique_ptr<PreTokenizer>(
        new RegexSplitPreTokenizer(*std::move(regex), SplitBehavior::kRemoved, true));
  }
  if (*type == "WhitespaceSplit") {
    absl::StatusOr<std::unique_ptr<Regex>> regex = CompileBuiltin(R"(\s)", at);
    if (!regex.ok()) return regex.status();
    return std::unique_ptr<PreTokenizer>(
        new RegexSplitPreTokenizer(*std::move(regex), SplitBehavior::kRemoved, false));
  }
  return at.Field("type").Error(
      absl::StrCat("unsupported pre_tokenizer ", Quote(*type),
                   " (supported: Sequence, Metaspace, ByteLevel, Split, Digits, Whitespace, "
                   "WhitespaceSplit)"));
}

}  // namespace kvscope::engine::tokenizer_internal
