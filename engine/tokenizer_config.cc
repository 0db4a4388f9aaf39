// File: engine/tokenizer_config.cc
#include "engine/tokenizer_config.h"

#include "engine/tokenizer_json.h"

namespace kvscope::engine::tokenizer_internal {
namespace {

absl::StatusOr<std::optional<bool>> OptionalBool(const Json& j, std::string_view key,
                                                 const JsonPath& at) {
  if (IsAbsent(j, key)) return std::optional<bool>();
  absl::StatusOr<bool> value = GetBool(j, key, at, false);
  if (!value.ok()) return value.status();
  return std::optional<bool>(*value);
}

// A token given as "text" or {"content": "text", ...}.
absl::StatusOr<std::optional<std::string>> TokenField(const Json& j, std::string_view key,
                                                      const JsonPath& at) {
  const Json* v = FindField(j, key);
  if (v == nullptr || v->is_null()) return std::optional<std::string>();
  if (v->is_string()) return std::optional<std::string>(v->get<std::string>());
  if (v->is_object()) {
    absl::StatusOr<std::string> content = RequireString(*v, "content", at.Field(key));
    if (!content.ok()) return content.status();
    return std::optional<std::string>(*std::move(content));
  }
  return at.Field(key).Error("expected a string, an object with \"content\", or null");
}

}  // namespace

absl::StatusOr<TokenizerConfig> ParseTokenizerConfig(std::string_view text,
                                                     std::string_view source) {
  absl::StatusOr<Json> j = ParseJson(text, source);
  if (!j.ok()) return j.status();
  JsonPath at(source, "");
  if (!j->is_object()) return at.Error("expected a JSON object");
  TokenizerConfig config;
  absl::StatusOr<std::optional<bool>> flag = OptionalBool(*j, "add_bos_token", at);
  if (!flag.ok()) return flag.status();
  config.add_bos_token = *flag;
  flag = OptionalBool(*j, "add_eos_token", at);
  if (!flag.ok()) return flag.status();
  config.add_eos_token = *flag;
  flag = OptionalBool(*j, "legacy", at);
  if (!flag.ok()) return flag.status();
  config.legacy = *flag;
  flag = OptionalBool(*j, "add_prefix_space", at);
  if (!flag.ok()) return flag.status();
  config.add_prefix_space = *flag;
  flag = OptionalBool(*j, "clean_up_tokenization_spaces", at);
  if (!flag.ok()) return flag.status();
  config.clean_up_tokenization_spaces = flag->value_or(false);
  absl::StatusOr<std::optional<std::string>> token = TokenField(*j, "bos_token", at);
  if (!token.ok()) return token.status();
  config.bos_token = *std::move(token);
  token = TokenField(*j, "eos_token", at);
  if (!token.ok()) return token.status();
  config.eos_token = *std::move(token);
  absl::StatusOr<std::optional<std::string>> cls = OptionalString(*j, "tokenizer_class", at);
  if (!cls.ok()) return cls.status();
  config.tokenizer_class = cls->value_or("");
  return config;
}

}  // namespace kvscope::engine::tokenizer_internal
