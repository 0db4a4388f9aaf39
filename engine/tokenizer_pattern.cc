// File: engine/tokenizer_pattern.cc
#include "engine/tokenizer_pattern.h"

#include <utility>
#include <vector>

namespace kvscope::engine::tokenizer_internal {

absl::StatusOr<std::unique_ptr<Regex>> ParsePattern(const Json& j, const JsonPath& at) {
  if (!j.is_object() || j.size() != 1) {
    return at.Error("expected {\"String\": ...} or {\"Regex\": ...}");
  }
  bool literal = FindField(j, "String") != nullptr;
  std::string_view key = literal ? "String" : "Regex";
  if (!literal && FindField(j, "Regex") == nullptr) {
    return at.Error("expected {\"String\": ...} or {\"Regex\": ...}");
  }
  absl::StatusOr<std::string> source = RequireString(j, key, at);
  if (!source.ok()) return source.status();
  if (source->empty()) return at.Field(key).Error("empty pattern");
  absl::StatusOr<std::unique_ptr<Regex>> regex = Regex::Compile(*source, literal);
  if (!regex.ok()) return at.Field(key).Error(regex.status().message());
  return regex;
}

absl::Status ReplaceAll(const Regex& pattern, std::string_view content, std::string* text) {
  std::vector<std::pair<size_t, size_t>> matches;
  absl::Status status = pattern.FindAll(*text, &matches);
  if (!status.ok()) return status;
  if (matches.empty()) return absl::OkStatus();
  std::string out;
  out.reserve(text->size());
  size_t prev = 0;
  for (const auto& [begin, end] : matches) {
    if (begin < prev) continue;
    out.append(*text, prev, begin - prev);
    out.append(content);
    prev = end;
  }
  out.append(*text, prev, std::string::npos);
  *text = std::move(out);
  return absl::OkStatus();
}

}  // namespace kvscope::engine::tokenizer_internal
