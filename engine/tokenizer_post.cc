// File: engine/tokenizer_post.cc
#include "engine/tokenizer_post.h"

#include "absl/strings/str_cat.h"

namespace kvscope::engine::tokenizer_internal {
namespace {

absl::StatusOr<SpecialTokenFrame> ParseTemplate(const Json& j, const JsonPath& at) {
  const Json* single = FindField(j, "single");
  if (single == nullptr || !single->is_array()) {
    return at.Field("single").Error("expected an array of template pieces");
  }
  const Json* specials = FindField(j, "special_tokens");
  SpecialTokenFrame frame;
  int sequences = 0;
  for (size_t i = 0; i < single->size(); ++i) {
    JsonPath item_at = at.Field("single").Index(i);
    const Json& item = (*single)[i];
    if (const Json* seq = FindField(item, "Sequence")) {
      absl::StatusOr<std::string> name = RequireString(*seq, "id", item_at.Field("Sequence"));
      if (!name.ok()) return name.status();
      if (*name != "A") {
        return item_at.Field("Sequence").Field("id").Error("a single template may only use A");
      }
      ++sequences;
      continue;
    }
    const Json* special = FindField(item, "SpecialToken");
    if (special == nullptr) return item_at.Error("expected {\"Sequence\"} or {\"SpecialToken\"}");
    absl::StatusOr<std::string> name = RequireString(*special, "id", item_at.Field("SpecialToken"));
    if (!name.ok()) return name.status();
    const Json* entry = specials == nullptr ? nullptr : FindField(*specials, *name);
    JsonPath entry_at = at.Field("special_tokens").Field(Quote(*name));
    if (entry == nullptr) return entry_at.Error("missing (used by the single template)");
    const Json* ids = FindField(*entry, "ids");
    if (ids == nullptr || !ids->is_array()) return entry_at.Field("ids").Error("expected an array");
    std::vector<int32_t>& target = sequences == 0 ? frame.prefix : frame.suffix;
    for (size_t k = 0; k < ids->size(); ++k) {
      absl::StatusOr<int32_t> id = AsId((*ids)[k], entry_at.Field("ids").Index(k));
      if (!id.ok()) return id.status();
      target.push_back(*id);
    }
  }
  if (sequences != 1) return at.Field("single").Error("must contain the sequence A exactly once");
  return frame;
}

// BertProcessing / RobertaProcessing: {"cls": [token, id], "sep": [token, id]}.
absl::StatusOr<int32_t> PairId(const Json& j, std::string_view key, const JsonPath& at) {
  const Json* pair = FindField(j, key);
  if (pair == nullptr || !pair->is_array() || pair->size() != 2 || !(*pair)[0].is_string()) {
    return at.Field(key).Error("expected [token, id]");
  }
  return AsId((*pair)[1], at.Field(key).Index(1));
}

}  // namespace

absl::StatusOr<SpecialTokenFrame> ParsePostProcessor(const Json& j, const JsonPath& at, int depth) {
  if (j.is_null()) return SpecialTokenFrame();
  if (depth > kMaxComponentDepth) return at.Error("Sequence nesting too deep");
  absl::StatusOr<std::string> type = RequireType(j, at);
  if (!type.ok()) return type.status();
  if (*type == "TemplateProcessing") return ParseTemplate(j, at);
  if (*type == "ByteLevel") return SpecialTokenFrame();
  if (*type == "BertProcessing" || *type == "RobertaProcessing") {
    absl::StatusOr<int32_t> cls = PairId(j, "cls", at);
    if (!cls.ok()) return cls.status();
    absl::StatusOr<int32_t> sep = PairId(j, "sep", at);
    if (!sep.ok()) return sep.status();
    return SpecialTokenFrame{{*cls}, {*sep}};
  }
  if (*type == "Sequence") {
    const Json* list = FindField(j, "processors");
    if (list == nullptr || !list->is_array()) {
      return at.Field("processors").Error("expected an array");
    }
    SpecialTokenFrame frame;
    for (size_t i = 0; i < list->size(); ++i) {
      JsonPath item_at = at.Field("processors").Index(i);
      if ((*list)[i].is_null()) return item_at.Error("expected a post_processor object");
      absl::StatusOr<SpecialTokenFrame> inner = ParsePostProcessor((*list)[i], item_at, depth + 1);
      if (!inner.ok()) return inner.status();
      // Applied in order: the later processor wraps the earlier result.
      inner->prefix.insert(inner->prefix.end(), frame.prefix.begin(), frame.prefix.end());
      frame.prefix = std::move(inner->prefix);
      frame.suffix.insert(frame.suffix.end(), inner->suffix.begin(), inner->suffix.end());
    }
    return frame;
  }
  return at.Field("type").Error(
      absl::StrCat("unsupported post_processor ", Quote(*type),
                   " (supported: TemplateProcessing, ByteLevel, BertProcessing, RobertaProcessing, "
                   "Sequence)"));
}

}  // namespace kvscope::engine::tokenizer_internal
