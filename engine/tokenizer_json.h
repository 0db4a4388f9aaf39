// File: engine/tokenizer_json.h
//
// Typed, exception-free reading of tokenizer.json / tokenizer_config.json values. Every
// error is a one-line InvalidArgument "<source>: field <path>: <what>", where <source> is
// the file (or caller-chosen name) and <path> the dotted JSON path ("model.merges[3]").
// Internal to the tokenizer library.
#ifndef KVSCOPE_ENGINE_TOKENIZER_JSON_H_
#define KVSCOPE_ENGINE_TOKENIZER_JSON_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace kvscope::engine::tokenizer_internal {

using Json = nlohmann::json;

// Debian's Abseil has its own absl::string_view (not std::string_view); this bridges the
// two for StrCat and heterogeneous lookups.
inline absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Nesting limit for Sequence components, so that a hostile file cannot exhaust the stack.
inline constexpr int kMaxComponentDepth = 16;

// Names one place in a JSON document, for error messages.
class JsonPath {
 public:
  JsonPath(std::string_view source, std::string path) : source_(source), path_(std::move(path)) {}

  JsonPath Field(std::string_view key) const;
  JsonPath Index(size_t i) const;
  // InvalidArgument "<source>: field <path>: <what>" (control characters in `what` are
  // replaced so the message stays on one line).
  absl::Status Error(absl::string_view what) const;
  const std::string& path() const { return path_; }
  const std::string& source() const { return source_; }

 private:
  std::string source_;  // file name or caller-chosen label
  std::string path_;    // dotted path from the document root
};

// A short printable rendering of a string taken from the file, for error messages:
// quoted, control characters escaped, cut to 40 bytes.
std::string Quote(std::string_view s);

// Parses `text` as JSON. InvalidArgument "<source>: not valid JSON: ..." on failure.
absl::StatusOr<Json> ParseJson(std::string_view text, std::string_view source);

// The member `key` of `obj`, or nullptr when `obj` is not an object or lacks it.
const Json* FindField(const Json& obj, std::string_view key);
// True when `key` is absent or null.
bool IsAbsent(const Json& obj, std::string_view key);

// Accessors on member `key` of object `obj`; `at` is the path of `obj`. A wrong type is an
// error; an absent (or null) member gives the default (or nullopt), except for Require*.
absl::StatusOr<std::string> RequireString(const Json& obj, std::string_view key,
                                          const JsonPath& at);
absl::StatusOr<std::optional<std::string>> OptionalString(const Json& obj, std::string_view key,
                                                          const JsonPath& at);
absl::StatusOr<bool> GetBool(const Json& obj, std::string_view key, const JsonPath& at,
                             bool default_value);
// Integer in [min_value, max_value].
absl::StatusOr<int64_t> GetInt(const Json& obj, std::string_view key, const JsonPath& at,
                               int64_t default_value, int64_t min_value, int64_t max_value);
// A string of exactly one Unicode character, returned as its UTF-8 bytes.
absl::StatusOr<std::string> RequireChar(const Json& obj, std::string_view key, const JsonPath& at);
// obj must be an object with a string "type"; returns it.
absl::StatusOr<std::string> RequireType(const Json& obj, const JsonPath& at);
// An id: a JSON integer in [0, INT32_MAX - 1].
absl::StatusOr<int32_t> AsId(const Json& value, const JsonPath& at);

}  // namespace kvscope::engine::tokenizer_internal

#endif  // KVSCOPE_ENGINE_TOKENIZER_JSON_H_
