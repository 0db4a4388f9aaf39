// File: engine/yaml_document.h
//
// Guards YAML reading against a yaml-cpp 0.7 (Debian 12) defect: YAML::LoadAll never returns
// on a document that starts with a stray ',' (",name: x"): each round yields an empty
// document without consuming the token, and memory grows until the process dies. The event
// parser shows the same lack of progress, which this check detects; callers then read the
// one document with YAML::Load, which returns.
#ifndef KVSCOPE_ENGINE_YAML_DOCUMENT_H_
#define KVSCOPE_ENGINE_YAML_DOCUMENT_H_

#include <optional>
#include <string>

#include "yaml-cpp/yaml.h"

namespace kvscope::engine {

struct YamlDocumentCheck {
  int documents = 0;  // documents in the text, counted up to 100
  YAML::Mark second_start = YAML::Mark::null_mark();  // where the second one starts
  // Set when the parser stopped making progress: where, and what went wrong.
  std::optional<YAML::Mark> stuck_at;
  std::string stuck_message;
};

// Counts the documents of `text` without building them. Throws YAML::Exception (with its
// mark) for malformed text, as YAML::Load would.
YamlDocumentCheck CheckYamlDocuments(const std::string& text);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_YAML_DOCUMENT_H_
