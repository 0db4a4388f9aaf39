// File: engine/tokenizer_normalize.cc
#include "engine/tokenizer_normalize.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer_pattern.h"
#include "engine/tokenizer_unicode.h"

namespace kvscope::engine::tokenizer_internal {
namespace {

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts)
      : parts_(std::move(parts)) {}
  absl::Status Normalize(std::string* text) const override {
    for (const auto& part : parts_) {
      absl::Status status = part->Normalize(text);
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;  // applied in order
};

// Prepends a string to non-empty text (tokenizers' Prepend leaves "" alone).
class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  absl::Status Normalize(std::string* text) const override {
    if (!text->empty()) text->insert(0, prefix_);
    return absl::OkStatus();
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::unique_ptr<Regex> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  absl::Status Normalize(std::string* text) const override {
    return ReplaceAll(*pattern_, content_, text);
  }

 private:
  std::unique_ptr<Regex> pattern_;
  std::string content_;  // replacement for every match
};

class NfcNormalizer : public Normalizer {
 public:
  absl::Status Normalize(std::string* text) const override {
    size_t offset = FirstNfcUnsafe(*text);
    if (offset == std::string::npos) return absl::OkStatus();
    return absl::UnimplementedError(absl::StrCat(
        "NFC normalizer: the character at byte offset ", offset,
        " of the normalized segment "
        "may change under NFC (combining or decomposable); only already-composed text is "
        "supported"));
  }
};

class LowercaseNormalizer : public Normalizer {
 public:
  absl::Status Normalize(std::string* text) const override {
    *text = ToLower(*text);
    return absl::OkStatus();
  }
};

// Strips Unicode whitespace from the left and/or right.
class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  absl::Status Normalize(std::string* text) const override {
    size_t begin = 0, end = text->size();
    if (left_) {
      while (begin < end) {
        size_t next = begin;
        if (!IsWhitespace(NextCodePoint(*text, &next))) break;
        begin = next;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<unsigned char>((*text)[start]) & 0xC0) == 0x80) {
          --start;
        }
        size_t p = start;
        if (!IsWhitespace(NextCodePoint(*text, &p))) break;
        end = start;
      }
    }
    *text = text->substr(begin, end - begin);
    return absl::OkStatus();
  }

 private:
  bool left_;
  bool right_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const Json& j, const JsonPath& at,
                                                            int depth) {
  if (j.is_null()) return std::unique_ptr<Normalizer>();
  if (depth > kMaxComponentDepth) return at.Error("Sequence nesting too deep");
  absl::StatusOr<std::string> type = RequireType(j, at);
  if (!type.ok()) return type.status();
  if (*type == "Sequence") {
    const Json* list = FindField(j, "normalizers");
    if (list == nullptr || !list->is_array()) {
      return at.Field("normalizers").Error("expected an array");
    }
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (size_t i = 0; i < list->size(); ++i) {
      JsonPath item_at = at.Field("normalizers").Index(i);
      if ((*list)[i].is_null()) return item_at.Error("expected a normalizer object");
      absl::StatusOr<std::unique_ptr<Normalizer>> part =
          ParseNormalizer((*list)[i], item_at, depth + 1);
      if (!part.ok()) return part.status();
      parts.push_back(*std::move(part));
    }
    return std::unique_ptr<Normalizer>(new SequenceNormalizer(std::move(parts)));
  }
  if (*type == "Prepend") {
    absl::StatusOr<std::string> prefix = RequireString(j, "prepend", at);
    if (!prefix.ok()) return prefix.status();
    return std::unique_ptr<Normalizer>(new PrependNormalizer(*std::move(prefix)));
  }
  if (*type == "Replace") {
    const Json* pattern = FindField(j, "pattern");
    if (pattern == nullptr) return at.Field("pattern").Error("missing");
    absl::StatusOr<std::unique_ptr<Regex>> regex = ParsePattern(*pattern, at.Field("pattern"));
    if (!regex.ok()) return regex.status();
    absl::StatusOr<std::string> content = RequireString(j, "content", at);
    if (!content.ok()) return content.status();
    return std::unique_ptr<Normalizer>(
        new ReplaceNormalizer(*std::move(regex), *std::move(content)));
  }
  if (*type == "NFC") return std::unique_ptr<Normalizer>(new NfcNormalizer());
  if (*type == "Lowercase") return std::unique_ptr<Normalizer>(new LowercaseNormalizer());
  if (*type == "Strip") {
    absl::StatusOr<bool> left = GetBool(j, "strip_left", at, true);
    if (!left.ok()) return left.status();
    absl::StatusOr<bool> right = GetBool(j, "strip_right", at, true);
    if (!right.ok()) return right.status();
    return std::unique_ptr<Normalizer>(new StripNormalizer(*left, *right));
  }
  return at.Field("type").Error(
      absl::StrCat("unsupported normalizer ", Quote(*type),
                   " (supported: Sequence, Prepend, Replace, NFC, Lowercase, Strip)"));
}

}  // namespace kvscope::engine::tokenizer_internal
