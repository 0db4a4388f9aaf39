// File: engine/tokenizer_decode.cc
#include "engine/tokenizer_decode.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/tokenizer_pattern.h"
#include "engine/tokenizer_regex.h"
#include "engine/tokenizer_unicode.h"

namespace kvscope::engine::tokenizer_internal {
namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// Splits valid UTF-8 into its characters.
std::vector<std::string_view> Chars(std::string_view s) {
  std::vector<std::string_view> out;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t start = pos;
    NextCodePoint(s, &pos);
    out.push_back(s.substr(start, pos - start));
  }
  return out;
}

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts)
      : parts_(std::move(parts)) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    for (const auto& part : parts_) {
      absl::Status status = part->DecodeChain(tokens);
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;  // applied in order
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(std::unique_ptr<Regex> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    for (std::string& token : *tokens) {
      absl::Status status = ReplaceAll(*pattern_, content_, &token);
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<Regex> pattern_;
  std::string content_;  // replacement for every match
};

// Runs of <0xNN> tokens become the bytes they name when those form valid UTF-8, else one
// U+FFFD per byte token.
class ByteFallbackDecoder : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens->size());
    std::string bytes;
    size_t byte_tokens = 0;
    auto flush = [&] {
      if (byte_tokens == 0) return;
      if (ValidateUtf8(bytes).ok()) {
        out.push_back(bytes);
      } else {
        for (size_t k = 0; k < byte_tokens; ++k) out.emplace_back(kReplacementChar);
      }
      bytes.clear();
      byte_tokens = 0;
    };
    for (std::string& token : *tokens) {
      int byte = ParseByteToken(token);
      if (byte >= 0) {
        bytes.push_back(static_cast<char>(byte));
        ++byte_tokens;
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    *tokens = std::move(out);
    return absl::OkStatus();
  }

 private:
  // The byte of a "<0xNN>" token (hex digits of either case), else -1.
  static int ParseByteToken(std::string_view t) {
    if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
    int value = 0;
    for (char c : t.substr(3, 2)) {
      int digit = (c >= '0' && c <= '9')   ? c - '0'
                  : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                  : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                           : -1;
      if (digit < 0) return -1;
      value = value * 16 + digit;
    }
    return value;
  }
};

class FuseDecoder : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    std::string joined = absl::StrJoin(*tokens, "");
    tokens->assign(1, std::move(joined));
    return absl::OkStatus();
  }
};

// Removes up to `start` leading and `stop` trailing copies of one character per token.
class StripDecoder : public Decoder {
 public:
  StripDecoder(std::string content, size_t start, size_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    for (std::string& token : *tokens) {
      std::vector<std::string_view> chars = Chars(token);
      size_t start_cut = 0;
      for (size_t i = 0; i < chars.size() && i < start_; ++i) {
        if (chars[i] != content_) break;
        start_cut = i + 1;
      }
      size_t stop_cut = chars.size();
      for (size_t i = 0; i < stop_ && i < chars.size() - start_cut; ++i) {
        size_t index = chars.size() - i - 1;
        if (chars[index] != content_) break;
        stop_cut = index;
      }
      std::string out;
      for (size_t i = start_cut; i < stop_cut; ++i) out.append(chars[i]);
      token = std::move(out);
    }
    return absl::OkStatus();
  }

 private:
  std::string content_;  // one character, UTF-8
  size_t start_;
  size_t stop_;
};

// Replacement character -> ' '; in the first token it is dropped instead unless the
// prepend scheme is "never" (tokenizers' Metaspace decoder).
class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool prepend)
      : replacement_(std::move(replacement)), prepend_(prepend) {}
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string out;
      for (std::string_view c : Chars((*tokens)[i])) {
        if (c == replacement_) {
          if (!(i == 0 && prepend_)) out.push_back(' ');
        } else {
          out.append(c);
        }
      }
      (*tokens)[i] = std::move(out);
    }
    return absl::OkStatus();
  }

 private:
  std::string replacement_;  // one character, UTF-8
  bool prepend_;             // prepend_scheme != "never"
};

// Maps byte-level characters back to bytes (a token with a character outside the table
// keeps its own bytes) and decodes the whole as lossy UTF-8 into one piece.
class ByteLevelDecoder : public Decoder {
 public:
  absl::Status DecodeChain(std::vector<std::string>* tokens) const override {
    std::string bytes;
    for (const std::string& token : *tokens) {
      std::string mapped;
      bool all = true;
      size_t pos = 0;
      while (pos < token.size()) {
        int b = ByteLevelByte(NextCodePoint(token, &pos));
        if (b < 0) {
          all = false;
          break;
        }
        mapped.push_back(static_cast<char>(b));
      }
      bytes += all ? mapped : token;
    }
    tokens->assign(1, Utf8Lossy(bytes));
    return absl::OkStatus();
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const Json& j, const JsonPath& at,
                                                      int depth) {
  if (j.is_null()) return std::unique_ptr<Decoder>();
  if (depth > kMaxComponentDepth) return at.Error("Sequence nesting too deep");
  absl::StatusOr<std::string> type = RequireType(j, at);
  if (!type.ok()) return type.status();
  if (*type == "Sequence") {
    const Json* list = FindField(j, "decoders");
    if (list == nullptr || !list->is_array())
      return at.Field("decoders").Error("expected an array");
    std::vector<std::unique_ptr<Decoder>> parts;
    for (size_t i = 0; i < list->size(); ++i) {
      JsonPath item_at = at.Field("decoders").Index(i);
      if ((*list)[i].is_null()) return item_at.Error("expected a decoder object");
      absl::StatusOr<std::unique_ptr<Decoder>> part = ParseDecoder((*list)[i], item_at, depth + 1);
      if (!part.ok()) return part.status();
      parts.push_back(*std::move(part));
    }
    return std::unique_ptr<Decoder>(new SequenceDecoder(std::move(parts)));
  }
  if (*type == "Replace") {
    const Json* pattern = FindField(j, "pattern");
    if (pattern == nullptr) return at.Field("pattern").Error("missing");
    absl::StatusOr<std::unique_ptr<Regex>> regex = ParsePattern(*pattern, at.Field("pattern"));
    if (!regex.ok()) return regex.status();
    absl::StatusOr<std::string> content = RequireString(j, "content", at);
    if (!content.ok()) return content.status();
    return std::unique_ptr<Decoder>(new ReplaceDecoder(*std::move(regex), *std::move(content)));
  }
  if (*type == "ByteFallback") return std::unique_ptr<Decoder>(new ByteFallbackDecoder());
  if (*type == "Fuse") return std::unique_ptr<Decoder>(new FuseDecoder());
  if (*type == "Strip") {
    absl::StatusOr<std::string> content = RequireChar(j, "content", at);
    if (!content.ok()) return content.status();
    absl::StatusOr<int64_t> start = GetInt(j, "start", at, 0, 0, 1 << 20);
    if (!start.ok()) return start.status();
    absl::StatusOr<int64_t> stop = GetInt(j, "stop", at, 0, 0, 1 << 20);
    if (!stop.ok()) return stop.status();
    return std::unique_ptr<Decoder>(new StripDecoder(*std::move(content), *start, *stop));
  }
  if (*type == "Metaspace") {
    absl::StatusOr<std::string> replacement = RequireChar(j, "replacement", at);
    if (!replacement.ok()) return replacement.status();
    bool prepend = true;
    absl::StatusOr<std::optional<std::string>> scheme = OptionalString(j, "prepend_scheme", at);
    if (!scheme.ok()) return scheme.status();
    if (scheme->has_value()) {
      if (**scheme != "always" && **scheme != "first" && **scheme != "never") {
        return at.Field("prepend_scheme").Error(absl::StrCat("unknown scheme ", Quote(**scheme)));
      }
      prepend = **scheme != "never";
    } else {
      absl::StatusOr<bool> add = GetBool(j, "add_prefix_space", at, true);
      if (!add.ok()) return add.status();
      prepend = *add;
    }
    return std::unique_ptr<Decoder>(new MetaspaceDecoder(*std::move(replacement), prepend));
  }
  if (*type == "ByteLevel") return std::unique_ptr<Decoder>(new ByteLevelDecoder());
  return at.Field("type").Error(absl::StrCat(
      "unsupported decoder ", Quote(*type),
      " (supported: Sequence, Replace, ByteFallback, Fuse, Strip, Metaspace, ByteLevel)"));
}

}  // namespace kvscope::engine::tokenizer_internal
