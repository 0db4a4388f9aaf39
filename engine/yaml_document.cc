#include "engine/yaml_document.h"

#include <sstream>

#include "yaml-cpp/eventhandler.h"

namespace kvscope::engine {
namespace {

// Records where each document starts; everything else is ignored.
class DocumentStarts final : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override { start = mark; }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
  YAML::Mark start = YAML::Mark::null_mark();
};

constexpr int kMaxDocuments = 100;

}  // namespace

YamlDocumentCheck CheckYamlDocuments(const std::string& text) {
  YamlDocumentCheck check;
  std::istringstream in(text);
  YAML::Parser parser(in);
  DocumentStarts events;
  int previous_pos = -1;
  while (check.documents < kMaxDocuments && parser.HandleNextDocument(events)) {
    if (check.documents > 0 && events.start.pos == previous_pos) {
      const char c = events.start.pos >= 0 && events.start.pos < static_cast<int>(text.size())
                         ? text[events.start.pos]
                         : '?';
      check.stuck_at = events.start;
      check.stuck_message =
          std::string("malformed YAML: unexpected '") + c + "' where a value should start";
      return check;
    }
    if (check.documents == 1) check.second_start = events.start;
    previous_pos = events.start.pos;
    ++check.documents;
  }
  return check;
}

}  // namespace kvscope::engine
