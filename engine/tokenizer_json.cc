// File: engine/tokenizer_json.cc
#include "engine/tokenizer_json.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/tokenizer_unicode.h"

namespace kvscope::engine::tokenizer_internal {
namespace {

// Replaces bytes that would break a one-line message.
std::string OneLine(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      absl::StrAppendFormat(&out, "\\x%02x", u);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

}  // namespace

JsonPath JsonPath::Field(std::string_view key) const {
  return JsonPath(source_, path_.empty() ? std::string(key) : absl::StrCat(path_, ".", Sv(key)));
}

JsonPath JsonPath::Index(size_t i) const {
  return JsonPath(source_, absl::StrCat(path_, "[", i, "]"));
}

absl::Status JsonPath::Error(absl::string_view what) const {
  return absl::InvalidArgumentError(
      OneLine(absl::StrCat(source_, ": field ", path_.empty() ? "(root)" : path_, ": ", what)));
}

std::string Quote(std::string_view s) {
  constexpr size_t kMax = 40;
  std::string_view cut = s.substr(0, kMax);
  // Do not cut inside a UTF-8 sequence.
  while (!cut.empty() && cut.size() < s.size() &&
         (static_cast<unsigned char>(s[cut.size()]) & 0xC0) == 0x80) {
    cut.remove_suffix(1);
  }
  std::string out = "\"";
  for (char c : cut) {
    unsigned char u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (u < 0x20 || u == 0x7f) {
      absl::StrAppendFormat(&out, "\\x%02x", u);
    } else {
      out.push_back(c);
    }
  }
  out += cut.size() < s.size() ? "...\"" : "\"";
  return out;
}

absl::StatusOr<Json> ParseJson(std::string_view text, std::string_view source) {
  // NOTE: exceptions are used only inside this call, to obtain nlohmann's error position;
  // none escapes.
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        OneLine(absl::StrCat(Sv(source), ": not valid JSON: ", e.what())));
  }
}

const Json* FindField(const Json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

bool IsAbsent(const Json& obj, std::string_view key) {
  const Json* v = FindField(obj, key);
  return v == nullptr || v->is_null();
}

absl::StatusOr<std::string> RequireString(const Json& obj, std::string_view key,
                                          const JsonPath& at) {
  const Json* v = FindField(obj, key);
  if (v == nullptr) return at.Field(key).Error("missing (expected a string)");
  if (!v->is_string()) return at.Field(key).Error("expected a string");
  return v->get_ref<const std::string&>();
}

absl::StatusOr<std::optional<std::string>> OptionalString(const Json& obj, std::string_view key,
                                                          const JsonPath& at) {
  const Json* v = FindField(obj, key);
  if (v == nullptr || v->is_null()) return std::optional<std::string>();
  if (!v->is_string()) return at.Field(key).Error("expected a string or null");
  return std::optional<std::string>(v->get_ref<const std::string&>());
}

absl::StatusOr<bool> GetBool(const Json& obj, std::string_view key, const JsonPath& at,
                             bool default_value) {
  const Json* v = FindField(obj, key);
  if (v == nullptr || v->is_null()) return default_value;
  if (!v->is_boolean()) return at.Field(key).Error("expected true or false");
  return v->get<bool>();
}

absl::StatusOr<int64_t> GetInt(const Json& obj, std::string_view key, const JsonPath& at,
                               int64_t default_value, int64_t min_value, int64_t max_value) {
  const Json* v = FindField(obj, key);
  if (v == nullptr || v->is_null()) return default_value;
  int64_t value = 0;
  if (v->is_number_unsigned()) {
    uint64_t u = v->get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return at.Field(key).Error("integer out of range");
    }
    value = static_cast<int64_t>(u);
  } else if (v->is_number_integer()) {
    value = v->get<int64_t>();
  } else {
    return at.Field(key).Error("expected an integer");
  }
  if (value < min_value || value > max_value) {
    return at.Field(key).Error(
        absl::StrCat("integer ", value, " outside [", min_value, ", ", max_value, "]"));
  }
  return value;
}

absl::StatusOr<std::string> RequireChar(const Json& obj, std::string_view key,
                                        const JsonPath& at) {
  absl::StatusOr<std::string> s = RequireString(obj, key, at);
  if (!s.ok()) return s.status();
  size_t end = 0;  // end of the first character
  if (!s->empty() && ValidateUtf8(*s).ok()) NextCodePoint(*s, &end);
  if (s->empty() || end != s->size()) {
    return at.Field(key).Error(absl::StrCat("expected exactly one character, got ", Quote(*s)));
  }
  return s;
}

absl::StatusOr<std::string> RequireType(const Json& obj, const JsonPath& at) {
  if (!obj.is_object()) return at.Error("expected an object");
  return RequireString(obj, "type", at);
}

absl::StatusOr<int32_t> AsId(const Json& value, const JsonPath& at) {
  constexpr int64_t kMaxId = std::numeric_limits<int32_t>::max() - 1;
  if (value.is_number_unsigned()) {
    uint64_t u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(kMaxId)) return at.Error(absl::StrCat("id ", u, " too large"));
    return static_cast<int32_t>(u);
  }
  if (value.is_number_integer()) {
    int64_t i = value.get<int64_t>();
    if (i < 0 || i > kMaxId) return at.Error(absl::StrCat("id ", i, " out of range"));
    return static_cast<int32_t>(i);
  }
  return at.Error("expected an integer id");
}

}  // namespace kvscope::engine::tokenizer_internal
