// Sweep files: parsing, expansion and per-trial validation (docs/sweeps.md).
//
// The sweep is read with yaml-cpp, whose nodes keep their position in the file. Each
// distinct matrix point is built as an overlay over the base trial (a tree whose leaves are
// nodes of the sweep file), written out as a block-style bench YAML document, one key per
// line, and validated with the bench config reader. Each written line remembers the sweep
// node it came from, so an error of the bench reader ("<trial>:LINE: ...") is reported at
// the line of the offending value in the sweep file.
#include "coordinator/sweep.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <exception>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "engine/bench_config.h"
#include "engine/model.h"
#include "engine/presets.h"
#include "engine/yaml_document.h"
#include "kvcache/registry.h"

namespace kvscope::coordinator {
namespace {

// The keys of a bench YAML file a sweep's base trial may use (docs/bench.md; not `out`:
// the worker chooses each trial's output directory; not `seed`: it is the sweep seed).
const std::vector<std::string>& BaseKeys() {
  static const std::vector<std::string> keys = {"model",    "strategy",  "memory",
                                                "workload", "scheduler", "goodput",
                                                "tp",       "threads",   "request_rate",
                                                "gpu",      "nodes",
                                                "fault"};  // test-only (docs/bench.md)
  return keys;
}
const std::vector<std::string>& SweepOnlyKeys() {
  static const std::vector<std::string> keys = {"name", "matrix",       "link",   "repeats",
                                                "seed", "max_attempts", "backend"};
  return keys;
}
bool Contains(const std::vector<std::string>& list, const std::string& s) {
  return std::find(list.begin(), list.end(), s) != list.end();
}

constexpr int kMaxDepth = 32;     // nesting levels in a sweep file
constexpr int32_t kMaxTp = 1024;  // tensor-parallel size (= GPUs for cuda)
constexpr int32_t kMaxRepeatsCap = std::numeric_limits<int32_t>::max();
const char kTrialSource[] = "<trial>";  // the source name given to the bench reader
const char kPlaceholderOut[] = "/nonexistent/kvscope-sweep-validation";

// How a node reads in an error (long text is cut).
std::string Found(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar: {
      const std::string& s = node.Scalar();
      if (s.size() > 60) return absl::StrCat("'", s.substr(0, 60), "...' (", s.size(), " bytes)");
      return absl::StrCat("'", s, "'");
    }
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

std::string JoinPath(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : absl::StrCat(prefix, ".", key);
}

// --- Emitting YAML ------------------------------------------------------------------------

bool IsPlainSafe(const std::string& s) {
  if (s.empty() || s == "-" || s == "null" || s == "Null" || s == "NULL") return false;
  for (char c : s) {
    const bool ok = absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' ||
                    c == '+' || c == '-' || c == '/';
    if (!ok) return false;
  }
  return true;
}

// A scalar as YAML text: plain when that reads back the same, double-quoted otherwise.
std::string Quote(const std::string& s) {
  if (IsPlainSafe(s)) return s;
  std::string out = "\"";
  for (char c : s) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (u < 0x20 || u == 0x7f) {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 15];
    } else {
      out += c;
    }
  }
  out += '"';
  return out;
}

// A node in flow style on one line (lists only reach the bench reader in invalid files).
std::string Flow(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      return Quote(node.Scalar());
    case YAML::NodeType::Sequence: {
      std::vector<std::string> items;
      for (const YAML::Node& item : node) items.push_back(Flow(item));
      return absl::StrCat("[", absl::StrJoin(items, ", "), "]");
    }
    case YAML::NodeType::Map: {
      std::vector<std::string> items;
      for (const auto& entry : node) {
        items.push_back(absl::StrCat(Flow(entry.first), ": ", Flow(entry.second)));
      }
      return absl::StrCat("{", absl::StrJoin(items, ", "), "}");
    }
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      break;
  }
  return "null";
}

// Where a line of a trial document came from in the sweep file.
struct LineOrigin {
  std::string path;       // the bench key path, e.g. "workload.input_len.mean"
  YAML::Mark key_mark;    // the key in the sweep file (or the axis name)
  YAML::Mark value_mark;  // the value in the sweep file
  std::string where;      // "matrix.tp[1]" for a matrix value; "" for the base trial
};

// --- The trial tree -----------------------------------------------------------------------

// A YAML::Node handle that copies and assigns as a handle. (YAML::Node::operator= assigns
// through the handle: it would overwrite the sweep document's node that others share.)
struct NodeRef {
  YAML::Node node;
  NodeRef() = default;
  explicit NodeRef(const YAML::Node& n) : node(n) {}
  NodeRef(const NodeRef& other) : node(other.node) {}
  NodeRef& operator=(const NodeRef& other) {
    node.reset(other.node);
    return *this;
  }
};

struct Entry;
// A map built from the base trial and the axis values; leaves are nodes of the sweep file.
struct TNode {
  bool is_leaf = false;
  NodeRef leaf;
  std::vector<Entry> entries;  // when !is_leaf
};
struct Entry {
  std::string key;
  YAML::Mark key_mark;
  YAML::Mark value_mark;
  std::string where;
  TNode value;
};

TNode Leaf(const YAML::Node& node) {
  TNode t;
  t.is_leaf = true;
  t.leaf = NodeRef(node);
  return t;
}

class TrialWriter {
 public:
  void EmitEntries(const TNode& map, int indent, const std::string& prefix) {
    for (const Entry& e : map.entries) {
      const std::string path = JoinPath(prefix, e.key);
      if (e.value.is_leaf) {
        EmitLeaf(e.key, e.value.leaf.node, indent, path, e.key_mark, e.value_mark, e.where);
      } else if (e.value.entries.empty()) {
        Line(indent, absl::StrCat(Quote(e.key), ": {}"), {path, e.key_mark, e.key_mark, e.where});
      } else {
        Line(indent, absl::StrCat(Quote(e.key), ":"), {path, e.key_mark, e.key_mark, e.where});
        EmitEntries(e.value, indent + 2, path);
      }
    }
  }
  void Line(int indent, const std::string& text, LineOrigin origin) {
    text_.append(static_cast<size_t>(indent), ' ');
    text_ += text;
    text_ += '\n';
    lines_.push_back(std::move(origin));
  }
  const std::string& text() const { return text_; }
  const std::vector<LineOrigin>& lines() const { return lines_; }

 private:
  void EmitLeaf(const std::string& key, const YAML::Node& node, int indent, const std::string& path,
                const YAML::Mark& key_mark, const YAML::Mark& value_mark,
                const std::string& where) {
    const std::string k = Quote(key);
    switch (node.Type()) {
      case YAML::NodeType::Scalar:
        Line(indent, absl::StrCat(k, ": ", Quote(node.Scalar())),
             {path, key_mark, value_mark, where});
        return;
      case YAML::NodeType::Map:
        if (node.size() == 0) {
          Line(indent, absl::StrCat(k, ": {}"), {path, key_mark, value_mark, where});
          return;
        }
        Line(indent, absl::StrCat(k, ":"), {path, key_mark, value_mark, where});
        for (const auto& entry : node) {
          // Keys are checked to be scalars before any trial is written.
          const std::string child = entry.first.IsScalar() ? entry.first.Scalar() : "?";
          EmitLeaf(child, entry.second, indent + 2, JoinPath(path, child), entry.first.Mark(),
                   entry.second.Mark(), where);
        }
        return;
      case YAML::NodeType::Sequence:
        Line(indent, absl::StrCat(k, ": ", Flow(node)), {path, key_mark, value_mark, where});
        return;
      case YAML::NodeType::Null:
      case YAML::NodeType::Undefined:
        break;
    }
    // A null value has the next token's mark; the key is a better place to point at.
    Line(indent, absl::StrCat(k, ": null"), {path, key_mark, key_mark, where});
  }

  std::string text_;
  std::vector<LineOrigin> lines_;
};

// --- Axes ---------------------------------------------------------------------------------

struct Axis {
  std::string name;               // as written in the matrix
  std::vector<std::string> path;  // the bench key path; empty for `backend`
  YAML::Mark key_mark;
  std::vector<YAML::Node> values;
};

// The JSON form of an axis value: numbers and booleans typed, strings as written.
nlohmann::json ToJson(const YAML::Node& node, int depth = 0) {
  if (depth > kMaxDepth) return nullptr;
  switch (node.Type()) {
    case YAML::NodeType::Scalar: {
      const std::string& s = node.Scalar();
      if (node.Tag() != "!") {  // plain (not quoted)
        int64_t i;
        double d;
        if (absl::SimpleAtoi(s, &i)) return i;
        if (s.find_first_of("0123456789") != std::string::npos && absl::SimpleAtod(s, &d) &&
            std::isfinite(d) && s.find_first_of("xX") == std::string::npos) {
          return d;
        }
        if (s == "true") return true;
        if (s == "false") return false;
      }
      return s;
    }
    case YAML::NodeType::Sequence: {
      nlohmann::json a = nlohmann::json::array();
      for (const YAML::Node& item : node) a.push_back(ToJson(item, depth + 1));
      return a;
    }
    case YAML::NodeType::Map: {
      nlohmann::json o = nlohmann::json::object();
      for (const auto& entry : node) {
        if (entry.first.IsScalar()) o[entry.first.Scalar()] = ToJson(entry.second, depth + 1);
      }
      return o;
    }
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      break;
  }
  return nullptr;
}

// The label form of an axis value: "8", "h2o(kv_budget=0.2)", "preset:llama-tiny".
std::string LabelOf(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      return node.Scalar();
    case YAML::NodeType::Sequence:
      return Flow(node);
    case YAML::NodeType::Map: {
      std::string name;
      std::vector<std::string> rest;
      for (const auto& entry : node) {
        const std::string key = entry.first.IsScalar() ? entry.first.Scalar() : "?";
        const std::string value =
            entry.second.IsScalar() ? entry.second.Scalar() : Flow(entry.second);
        if (key == "name" && entry.second.IsScalar()) {
          name = value;
        } else {
          rest.push_back(absl::StrCat(key, node.size() == 1 ? ":" : "=", value));
        }
      }
      if (!name.empty()) {
        return rest.empty() ? name : absl::StrCat(name, "(", absl::StrJoin(rest, ","), ")");
      }
      return rest.size() == 1 ? rest[0] : absl::StrCat("(", absl::StrJoin(rest, ","), ")");
    }
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      break;
  }
  return "null";
}

// --- The parser ---------------------------------------------------------------------------

class SweepParser {
 public:
  SweepParser(std::string source, const SweepLimits& limits)
      : source_(std::move(source)), limits_(limits) {}

  absl::StatusOr<Sweep> Parse(const std::string& text);

 private:
  absl::Status At(const YAML::Mark& mark, const std::string& message) const {
    if (mark.is_null() || mark.line < 0) {
      return absl::InvalidArgumentError(absl::StrCat(source_, ": ", message));
    }
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ":", mark.line + 1, ":", mark.column + 1, ": ", message));
  }
  absl::Status KeyError(const YAML::Mark& mark, const std::string& key,
                        const std::string& message) const {
    return At(mark, absl::StrCat("key '", key, "': ", message));
  }

  absl::Status CheckOneDocument(const std::string& text) const;
  absl::Status CheckTree(const YAML::Node& node, const std::string& path, int depth,
                         int64_t* budget) const;
  absl::StatusOr<int64_t> GetInt(const YAML::Node& node, const std::string& key, int64_t lo,
                                 int64_t hi) const;
  absl::Status ReadBackend(const YAML::Node& node, const std::string& key, std::string* out) const;
  absl::Status ReadMatrix(const YAML::Node& matrix);
  absl::Status ReadLink(const YAML::Node& link);
  absl::Status SetPath(TNode* map, const Axis& axis, size_t i, const YAML::Node& value,
                       const YAML::Mark& value_mark, const std::string& where) const;
  absl::Status Explode(Entry* e, const std::string& path, const Axis& axis) const;
  absl::Status MapTrialError(const absl::Status& status, const TrialWriter& w,
                             const std::vector<std::string>& paths, const std::string& label,
                             bool prefer_key) const;
  absl::Status ValidatePoint(const TrialWriter& w, const std::string& label,
                             engine::BenchConfig* config) const;

  std::string source_;
  SweepLimits limits_;
  std::vector<YAML::Node> base_keys_, base_values_;  // the base trial, in file order
  std::vector<Axis> axes_;                           // matrix order
  std::vector<std::vector<int>> dims_;               // axes varying together, outer first
  std::string backend_ = "cpu";
  YAML::Mark seed_mark_;
};

absl::Status SweepParser::CheckTree(const YAML::Node& node, const std::string& path, int depth,
                                    int64_t* budget) const {
  if (--*budget < 0) {
    return At(node.Mark(),
              "the document expands to too many YAML nodes (anchors and aliases "
              "count once per use); simplify the file");
  }
  const std::string where = path.empty() ? "the document" : absl::StrCat("key '", path, "'");
  if (depth > kMaxDepth) {
    return At(node.Mark(), absl::StrCat(where, ": nested more than ", kMaxDepth,
                                        " levels deep; a sweep needs a few"));
  }
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      if (static_cast<int64_t>(node.Scalar().size()) > limits_.max_string_bytes) {
        return At(node.Mark(), absl::StrCat(where, ": a string of ", node.Scalar().size(),
                                            " bytes; the limit is ", limits_.max_string_bytes));
      }
      return absl::OkStatus();
    case YAML::NodeType::Sequence: {
      int64_t i = 0;
      for (const YAML::Node& item : node) {
        KVSCOPE_RETURN_IF_ERROR(
            CheckTree(item, absl::StrCat(path, "[", i++, "]"), depth + 1, budget));
      }
      return absl::OkStatus();
    }
    case YAML::NodeType::Map: {
      std::set<std::string> seen;
      for (const auto& entry : node) {
        const YAML::Node& key = entry.first;
        if (!key.IsScalar()) {
          return At(key.Mark(), absl::StrCat(where, ": expected a plain key, found ", Found(key)));
        }
        if (static_cast<int64_t>(key.Scalar().size()) > limits_.max_string_bytes) {
          return At(key.Mark(), absl::StrCat(where, ": a key of ", key.Scalar().size(),
                                             " bytes; the limit is ", limits_.max_string_bytes));
        }
        const std::string child = JoinPath(path, key.Scalar());
        if (!seen.insert(key.Scalar()).second) {
          return At(key.Mark(), absl::StrCat("key '", child, "' is given twice"));
        }
        KVSCOPE_RETURN_IF_ERROR(CheckTree(entry.second, child, depth + 1, budget));
      }
      return absl::OkStatus();
    }
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      break;
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> SweepParser::GetInt(const YAML::Node& node, const std::string& key,
                                            int64_t lo, int64_t hi) const {
  int64_t value;
  if (!node.IsScalar() || !absl::SimpleAtoi(node.Scalar(), &value) || value < lo || value > hi) {
    return KeyError(
        node.Mark(), key,
        absl::StrCat("expected an integer in [", lo, ", ", hi, "], found ", Found(node)));
  }
  return value;
}

absl::Status SweepParser::ReadBackend(const YAML::Node& node, const std::string& key,
                                      std::string* out) const {
  if (!node.IsScalar() || (node.Scalar() != "cpu" && node.Scalar() != "cuda")) {
    return KeyError(node.Mark(), key, absl::StrCat("found ", Found(node), ", allowed: cpu, cuda"));
  }
  *out = node.Scalar();
  return absl::OkStatus();
}

std::string AllowedAxes() {
  return "strategy, request_rate, tp, model, kv_bytes (memory.kv_bytes), backend, threads, "
         "nodes, memory, workload, scheduler, goodput, or a dotted path into one of them (e.g. "
         "workload.output_len, workload.input_len.mean, scheduler.max_num_seqs, "
         "strategy.kv_budget)";
}

absl::Status SweepParser::ReadMatrix(const YAML::Node& matrix) {
  if (matrix.IsNull()) return absl::OkStatus();
  if (!matrix.IsMap()) {
    return KeyError(
        matrix.Mark(), "matrix",
        absl::StrCat("expected a map of axis name -> list of values, found ", Found(matrix)));
  }
  if (static_cast<int64_t>(matrix.size()) > limits_.max_axes) {
    return KeyError(matrix.Mark(), "matrix",
                    absl::StrCat(matrix.size(), " axes; the limit is ", limits_.max_axes));
  }
  std::map<std::string, std::string> by_path;  // bench path -> axis name
  for (const auto& entry : matrix) {
    Axis axis;
    axis.name = entry.first.Scalar();
    axis.key_mark = entry.first.Mark();
    const std::string key = absl::StrCat("matrix.", axis.name);
    if (axis.name == "seed" || axis.name == "repeat" || axis.name == "repeats") {
      return At(axis.key_mark,
                absl::StrCat("unknown axis '", key,
                             "': seeds come from the sweep's `seed` and "
                             "`repeats` (trial seed = seed + repeat); allowed axes: ",
                             AllowedAxes()));
    }
    if (axis.name == "backend") {
      // Placement only: not a key of the trial's bench YAML.
    } else if (axis.name == "kv_bytes") {
      axis.path = {"memory", "kv_bytes"};
    } else {
      axis.path = absl::StrSplit(axis.name, '.');
      bool ok = Contains(BaseKeys(), axis.path[0]);
      for (const std::string& c : axis.path) ok = ok && !c.empty();
      if (!ok) {
        return At(axis.key_mark,
                  absl::StrCat("unknown axis '", key, "'",
                               axis.path[0] == "out"
                                   ? " (each trial's output directory is chosen by its worker)"
                                   : "",
                               "; allowed: ", AllowedAxes()));
      }
    }
    const std::string path = absl::StrJoin(axis.path, ".");
    auto [it, inserted] = by_path.emplace(path.empty() ? "backend" : path, axis.name);
    if (!inserted) {
      return At(axis.key_mark, absl::StrCat("axes '", it->second, "' and '", axis.name,
                                            "' set the same key '", it->first, "'"));
    }
    const YAML::Node& values = entry.second;
    if (!values.IsSequence() || values.size() == 0) {
      return KeyError(values.IsNull() ? axis.key_mark : values.Mark(), key,
                      absl::StrCat("expected a non-empty list of values (e.g. [1, 2]), found ",
                                   values.IsSequence() ? "an empty list" : Found(values)));
    }
    if (static_cast<int64_t>(values.size()) > limits_.max_values_per_axis) {
      return KeyError(values.Mark(), key,
                      absl::StrCat(values.size(), " values; the limit is ",
                                   limits_.max_values_per_axis, " per axis"));
    }
    int i = 0;
    for (const YAML::Node& v : values) {
      if (axis.name == "backend") {
        std::string unused;
        KVSCOPE_RETURN_IF_ERROR(ReadBackend(v, absl::StrCat(key, "[", i, "]"), &unused));
      }
      axis.values.push_back(v);
      ++i;
    }
    axes_.push_back(std::move(axis));
  }
  return absl::OkStatus();
}

absl::Status SweepParser::ReadLink(const YAML::Node& link) {
  std::vector<int> group_of(axes_.size(), -1);
  std::vector<std::vector<int>> groups;
  if (!link.IsNull()) {
    if (!link.IsSequence()) {
      return KeyError(link.Mark(), "link",
                      absl::StrCat("expected a list of axis groups (e.g. [[strategy, kv_bytes]]), "
                                   "found ",
                                   Found(link)));
    }
    int g = 0;
    for (const YAML::Node& group : link) {
      const std::string key = absl::StrCat("link[", g, "]");
      if (!group.IsSequence() || group.size() < 2) {
        return KeyError(group.Mark(), key,
                        absl::StrCat("expected a list of at least 2 matrix axes, found ",
                                     group.IsSequence() ? "fewer" : Found(group)));
      }
      std::vector<int> members;
      for (const YAML::Node& name : group) {
        int found = -1;
        for (size_t a = 0; a < axes_.size(); ++a) {
          if (name.IsScalar() && axes_[a].name == name.Scalar()) found = static_cast<int>(a);
        }
        if (found < 0) {
          std::vector<std::string> names;
          for (const Axis& axis : axes_) names.push_back(axis.name);
          return KeyError(name.Mark(), key,
                          absl::StrCat("found ", Found(name),
                                       ", which is not a matrix axis; "
                                       "allowed: ",
                                       names.empty() ? "(no axes)" : absl::StrJoin(names, ", ")));
        }
        if (group_of[found] >= 0) {
          return KeyError(name.Mark(), key,
                          absl::StrCat("axis '", axes_[found].name, "' is already linked in link[",
                                       group_of[found], "]"));
        }
        if (!members.empty() && axes_[found].values.size() != axes_[members[0]].values.size()) {
          const Axis& first = axes_[members[0]];
          return KeyError(name.Mark(), key,
                          absl::StrCat("linked axes vary together and need equal lengths: '",
                                       first.name, "' has ", first.values.size(), " values, '",
                                       axes_[found].name, "' has ", axes_[found].values.size()));
        }
        group_of[found] = g;
        members.push_back(found);
      }
      groups.push_back(std::move(members));
      ++g;
    }
  }
  // One dimension per unlinked axis or link group, placed at its first axis in matrix order.
  std::vector<bool> placed(groups.size(), false);
  for (size_t a = 0; a < axes_.size(); ++a) {
    if (group_of[a] < 0) {
      dims_.push_back({static_cast<int>(a)});
    } else if (!placed[group_of[a]]) {
      placed[group_of[a]] = true;
      std::vector<int> members = groups[group_of[a]];
      std::sort(members.begin(), members.end());
      dims_.push_back(std::move(members));
    }
  }
  return absl::OkStatus();
}

absl::Status SweepParser::Explode(Entry* e, const std::string& path, const Axis& axis) const {
  const YAML::Node node = e->value.leaf.node;
  TNode map;
  auto add = [&](const std::string& key, const YAML::Node& value) {
    map.entries.push_back(Entry{key, e->key_mark, e->value_mark, e->where, Leaf(value)});
  };
  if (node.IsMap()) {
    for (const auto& entry : node) {
      map.entries.push_back(Entry{entry.first.Scalar(), entry.first.Mark(), entry.second.Mark(),
                                  e->where, Leaf(entry.second)});
    }
  } else if (node.IsNull()) {
    // An empty map.
  } else if (node.IsScalar() && path == "strategy") {
    add("name", node);  // `strategy: h2o` is {name: h2o}
  } else if (node.IsScalar() && path == "model") {
    const std::string& s = node.Scalar();
    if (s.rfind("preset:", 0) == 0) {
      add("preset", YAML::Node(s.substr(7)));
    } else {
      add("path", node);
    }
  } else if (node.IsScalar() && (path == "workload.input_len" || path == "workload.output_len")) {
    add("mean", node);  // `input_len: 256` is {dist: fixed, mean: 256}
  } else {
    return At(axis.key_mark,
              absl::StrCat("axis 'matrix.", axis.name, "': cannot set a key inside '", path,
                           "', which is ", Found(node), " (not a map)"));
  }
  e->value = std::move(map);
  return absl::OkStatus();
}

absl::Status SweepParser::SetPath(TNode* map, const Axis& axis, size_t i, const YAML::Node& value,
                                  const YAML::Mark& value_mark, const std::string& where) const {
  const std::string& key = axis.path[i];
  Entry* e = nullptr;
  for (Entry& candidate : map->entries) {
    if (candidate.key == key) e = &candidate;
  }
  const bool last = i + 1 == axis.path.size();
  if (e == nullptr) {
    map->entries.push_back(Entry{key, axis.key_mark, axis.key_mark, where, TNode{}});
    e = &map->entries.back();
  }
  if (last) {
    e->value = Leaf(value);
    e->value_mark = value_mark;
    e->where = where;
    return absl::OkStatus();
  }
  if (e->value.is_leaf) {
    std::vector<std::string> prefix(axis.path.begin(), axis.path.begin() + i + 1);
    KVSCOPE_RETURN_IF_ERROR(Explode(e, absl::StrJoin(prefix, "."), axis));
  }
  return SetPath(&e->value, axis, i + 1, value, value_mark, where);
}

// Points an error of the bench reader or validator at the sweep file. `paths` are the
// bench keys the error is about, best first (used when the message has no line).
absl::Status SweepParser::MapTrialError(const absl::Status& status, const TrialWriter& w,
                                        const std::vector<std::string>& paths,
                                        const std::string& label, bool prefer_key) const {
  std::string message(status.message());
  const std::string prefix = absl::StrCat(kTrialSource, ":");
  const LineOrigin* origin = nullptr;
  bool from_line = false;
  if (message.rfind(prefix, 0) == 0) {
    message = message.substr(prefix.size());
    const size_t colon = message.find(':');
    int64_t line = 0;
    if (colon != std::string::npos && absl::SimpleAtoi(message.substr(0, colon), &line)) {
      if (line >= 1 && line <= static_cast<int64_t>(w.lines().size())) {
        origin = &w.lines()[line - 1];
        from_line = true;
      }
      message = message.substr(colon + 1);
    }
    message = std::string(absl::StripLeadingAsciiWhitespace(message));
  }
  // No line: the line whose key is the error's key, or the nearest enclosing one. A key
  // set by the matrix comes first: a value of the base trial alone would fail every point.
  for (int pass = 0; pass < 2 && origin == nullptr; ++pass) {
    for (size_t p = 0; origin == nullptr && p < paths.size(); ++p) {
      size_t best = 0;
      for (const LineOrigin& o : w.lines()) {
        if (pass == 0 && o.where.empty()) continue;
        const std::string& path = paths[p];
        const bool prefix_of = path == o.path || absl::StartsWith(path, absl::StrCat(o.path, "."));
        if (prefix_of && o.path.size() > best) {
          best = o.path.size();
          origin = &o;
        }
      }
    }
  }
  const bool key_error = prefer_key || message.find("unknown key") != std::string::npos ||
                         message.find("given twice") != std::string::npos;
  std::string text;
  if (origin != nullptr && !origin->where.empty())
    absl::StrAppend(&text, "in ", origin->where, ": ");
  absl::StrAppend(&text, message);
  if (!from_line && !label.empty()) absl::StrAppend(&text, " (trial ", label, ")");
  if (origin == nullptr) return At(YAML::Mark::null_mark(), text);
  return At(key_error ? origin->key_mark : origin->value_mark, text);
}

// The bench key a ValidateBenchConfig message is about (its messages carry no line).
std::vector<std::string> PathsOfValidationError(const std::string& m) {
  auto starts = [&](const char* p) { return absl::StartsWith(m, p); };
  if (starts("model")) return {"model"};
  if (starts("strategy")) return {"strategy"};
  if (starts("kv_memory_bytes")) return {"memory.kv_bytes"};
  if (starts("tp ")) return {"tp"};
  if (starts("threads")) return {"threads"};
  if (starts("nodes")) return {"nodes"};
  if (starts("request_rate")) return {"request_rate", "workload.request_rate"};
  if (starts("goodput ")) {
    const std::string rest = m.substr(8);
    return {absl::StrCat("goodput.", rest.substr(0, rest.find(' '))), "goodput"};
  }
  if (starts("workload: ")) {
    std::string field = m.substr(10);
    field = field.substr(0, field.find(' '));
    static const std::map<std::string, std::string> kRenamed = {
        {"text_path", "text"},
        {"trace_path", "trace"},
        {"num_prefix_groups", "prefix_groups"},
        {"shared_prefix_len", "prefix_len"},
        {"think_time_s", "think_time"},
        {"max_model_len", "scheduler.max_model_len"}};
    auto it = kRenamed.find(field);
    if (it != kRenamed.end() && it->second.rfind("scheduler", 0) == 0) return {it->second};
    if (it != kRenamed.end()) field = it->second;
    if (field == "request_rate") return {"request_rate", "workload.request_rate", "workload"};
    std::vector<std::string> paths = {absl::StrCat("workload.", field)};
    // Other keys the message names ("input_len.min must be <= input_len.max").
    for (absl::string_view word : absl::StrSplit(m.substr(10), ' ')) {
      word = absl::StripTrailingAsciiWhitespace(word);
      while (!word.empty() && (word.back() == ',' || word.back() == ')')) word.remove_suffix(1);
      if (absl::StrContains(word, "_len.")) paths.push_back(absl::StrCat("workload.", word));
    }
    paths.push_back("workload");
    return paths;
  }
  for (const char* key : {"max_num_seqs", "max_num_batched_tokens", "max_model_len"}) {
    if (starts(key)) return {absl::StrCat("scheduler.", key), "scheduler"};
  }
  if (starts("without chunked prefill")) {
    return {"scheduler.chunked_prefill", "scheduler.max_num_batched_tokens", "scheduler"};
  }
  return {};
}

// The strategy key a registry message is about.
std::vector<std::string> PathsOfStrategyError(const std::string& m, bool* key_error) {
  *key_error = false;
  if (absl::StartsWith(m, "unknown parameter '")) {
    const size_t end = m.find('\'', 19);
    *key_error = true;
    return {absl::StrCat("strategy.", m.substr(19, end == std::string::npos ? 0 : end - 19)),
            "strategy"};
  }
  if (absl::StartsWith(m, "strategy ")) {  // "strategy h2o: kv_budget=2 is out of range; ..."
    const size_t colon = m.find(": ");
    if (colon != std::string::npos) {
      const size_t eq = m.find('=', colon);
      if (eq != std::string::npos) {
        return {absl::StrCat("strategy.", m.substr(colon + 2, eq - colon - 2)), "strategy"};
      }
    }
  }
  return {"strategy.name", "strategy"};
}

absl::Status SweepParser::ValidatePoint(const TrialWriter& w, const std::string& label,
                                        engine::BenchConfig* config) const {
  const absl::Status parsed = engine::ParseBenchConfigYaml(w.text(), kTrialSource, config);
  if (!parsed.ok()) return MapTrialError(parsed, w, {}, label, false);
  config->out_dir = kPlaceholderOut;
  const absl::Status valid = engine::ValidateBenchConfig(*config);
  if (!valid.ok()) {
    return MapTrialError(valid, w, PathsOfValidationError(std::string(valid.message())), label,
                         false);
  }
  if (config->tp > kMaxTp) {
    return MapTrialError(absl::InvalidArgumentError(absl::StrCat("key 'tp': expected at most ",
                                                                 kMaxTp, ", found ", config->tp)),
                         w, {"tp"}, label, false);
  }
  const absl::Status strategy =
      kvcache::ParseStrategyParams(config->strategy, config->strategy_params).status();
  if (!strategy.ok()) {
    bool key_error = false;
    const std::vector<std::string> paths =
        PathsOfStrategyError(std::string(strategy.message()), &key_error);
    return MapTrialError(strategy, w, paths, label, key_error);
  }
  if (config->model.rfind("preset:", 0) == 0) {
    absl::StatusOr<engine::ModelConfig> mc = engine::PresetConfig(config->model.substr(7));
    if (!mc.ok()) {
      return MapTrialError(absl::InvalidArgumentError(mc.status().message()), w,
                           {"model.preset", "model"}, label, false);
    }
    const absl::Status tp = engine::ValidateTensorParallelSize(*mc, config->tp);
    if (!tp.ok()) return MapTrialError(tp, w, {"tp"}, label, false);
  }
  return absl::OkStatus();
}

// Counts documents without YAML::LoadAll, which can loop forever (engine/yaml_document.h).
absl::Status SweepParser::CheckOneDocument(const std::string& text) const {
  const engine::YamlDocumentCheck check = engine::CheckYamlDocuments(text);
  if (check.stuck_at) return At(*check.stuck_at, check.stuck_message);
  if (check.documents > 1) {
    return At(check.second_start,
              absl::StrCat("expected one YAML document, found ",
                           check.documents >= 100 ? std::string("100 or more")
                                                  : absl::StrCat(check.documents)));
  }
  return absl::OkStatus();
}

absl::StatusOr<Sweep> SweepParser::Parse(const std::string& text) {
  if (static_cast<int64_t>(text.size()) > limits_.max_text_bytes) {
    return At(YAML::Mark::null_mark(),
              absl::StrCat("the sweep file is ", text.size(), " bytes; the limit is ",
                           limits_.max_text_bytes));
  }
  YAML::Node root;
  try {
    KVSCOPE_RETURN_IF_ERROR(CheckOneDocument(text));
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return At(e.mark, absl::StrCat("malformed YAML: ", e.msg));
  } catch (const std::exception& e) {
    return At(YAML::Mark::null_mark(), absl::StrCat("reading YAML failed: ", e.what()));
  }
  std::vector<std::string> top_keys = {"name"};
  for (const std::string& k : BaseKeys()) top_keys.push_back(k);
  for (const std::string& k : SweepOnlyKeys()) {
    if (k != "name") top_keys.push_back(k);
  }
  if (!root.IsMap()) {
    return At(root.Mark(), absl::StrCat("expected a map with the keys ",
                                        absl::StrJoin(top_keys, ", "), ", found ", Found(root)));
  }
  // Without aliases a node takes at least half a byte of text ("{a,b}" is 5 nodes).
  int64_t budget = 2 * static_cast<int64_t>(text.size()) + 64;
  KVSCOPE_RETURN_IF_ERROR(CheckTree(root, "", 0, &budget));

  Sweep sweep;
  YAML::Node matrix, link;
  for (const auto& entry : root) {
    const std::string key = entry.first.Scalar();
    const YAML::Node& value = entry.second;
    if (Contains(BaseKeys(), key)) {
      base_keys_.push_back(entry.first);
      base_values_.push_back(value);
    } else if (key == "name") {
      if (!value.IsScalar() || value.Scalar().empty()) {
        return KeyError(value.IsNull() ? entry.first.Mark() : value.Mark(), key,
                        absl::StrCat("expected a non-empty name, found ", Found(value)));
      }
      sweep.name = value.Scalar();
    } else if (key == "matrix") {
      matrix = value;
    } else if (key == "link") {
      link = value;
    } else if (key == "repeats") {
      KVSCOPE_ASSIGN_OR_RETURN(const int64_t r, GetInt(value, key, 1, kMaxRepeatsCap));
      sweep.repeats = static_cast<int32_t>(r);
    } else if (key == "seed") {
      uint64_t seed;
      if (!value.IsScalar() || value.Scalar().find('-') != std::string::npos ||
          !absl::SimpleAtoi(value.Scalar(), &seed)) {
        return KeyError(value.Mark(), key,
                        absl::StrCat("expected an integer >= 0, found ", Found(value)));
      }
      sweep.seed = seed;
      seed_mark_ = value.Mark();
    } else if (key == "max_attempts") {
      KVSCOPE_ASSIGN_OR_RETURN(const int64_t a, GetInt(value, key, 1, 100));
      sweep.max_attempts = static_cast<int32_t>(a);
    } else if (key == "backend") {
      KVSCOPE_RETURN_IF_ERROR(ReadBackend(value, key, &backend_));
    } else {
      return At(entry.first.Mark(),
                absl::StrCat("unknown key '", key, "'",
                             key == "out" ? " (each trial's output directory is chosen by its "
                                            "worker)"
                                          : "",
                             "; allowed: ", absl::StrJoin(top_keys, ", ")));
    }
  }
  if (sweep.name.empty()) {
    return At(root.Mark(), "missing key 'name' (a name for the experiment, e.g. name: quickstart)");
  }
  if (sweep.seed >
      std::numeric_limits<uint64_t>::max() - static_cast<uint64_t>(sweep.repeats - 1)) {
    return KeyError(seed_mark_, "seed",
                    absl::StrCat("seed + repeats - 1 must fit in 64 bits, found seed ", sweep.seed,
                                 " with ", sweep.repeats, " repeats"));
  }
  KVSCOPE_RETURN_IF_ERROR(ReadMatrix(matrix));
  KVSCOPE_RETURN_IF_ERROR(ReadLink(link));
  for (const Axis& axis : axes_) sweep.axis_names.push_back(axis.name);

  // The number of trials, refused before anything is expanded (no overflow: each factor is
  // checked against the limit first).
  int64_t points = 1;
  for (const std::vector<int>& dim : dims_) {
    const int64_t n = static_cast<int64_t>(axes_[dim[0]].values.size());
    if (points > limits_.max_trials / n) {
      points = limits_.max_trials + 1;
      break;
    }
    points *= n;
  }
  if (points > limits_.max_trials || points > limits_.max_trials / sweep.repeats) {
    std::vector<std::string> sizes;
    for (const std::vector<int>& dim : dims_)
      sizes.push_back(absl::StrCat(axes_[dim[0]].values.size()));
    return At(
        matrix.IsNull() ? YAML::Mark::null_mark() : matrix.Mark(),
        absl::StrCat("the sweep expands to more than ", limits_.max_trials,
                     " trials (the limit): ", sizes.empty() ? "1" : absl::StrJoin(sizes, " x "),
                     " matrix points x ", sweep.repeats, " repeats"));
  }

  // The base trial.
  TNode base;
  for (size_t i = 0; i < base_keys_.size(); ++i) {
    base.entries.push_back(
        Entry{base_keys_[i].Scalar(), base_keys_[i].Mark(),
              base_values_[i].IsNull() ? base_keys_[i].Mark() : base_values_[i].Mark(), "",
              Leaf(base_values_[i])});
  }
  // Axes apply shortest path first, so `strategy.kv_budget` adds to the `strategy` value.
  std::vector<int> order(axes_.size());
  for (size_t a = 0; a < axes_.size(); ++a) order[a] = static_cast<int>(a);
  std::stable_sort(order.begin(), order.end(),
                   [&](int x, int y) { return axes_[x].path.size() < axes_[y].path.size(); });

  sweep.trials.resize(static_cast<size_t>(points * sweep.repeats));
  std::vector<size_t> counter(dims_.size(), 0);
  int64_t total_bytes = 0;
  for (int64_t p = 0; p < points; ++p) {
    std::vector<int> value_of(axes_.size(), 0);
    for (size_t d = 0; d < dims_.size(); ++d) {
      for (int a : dims_[d]) value_of[a] = static_cast<int>(counter[d]);
    }
    TNode root_node = base;
    std::string backend = backend_;
    nlohmann::json axes_json = nlohmann::json::object();
    std::vector<std::string> label_parts;
    for (size_t a = 0; a < axes_.size(); ++a) {
      const YAML::Node& v = axes_[a].values[value_of[a]];
      axes_json[axes_[a].name] = ToJson(v);
      label_parts.push_back(absl::StrCat(axes_[a].name, "=", LabelOf(v)));
      if (axes_[a].path.empty()) backend = v.Scalar();
    }
    for (int a : order) {
      const Axis& axis = axes_[a];
      if (axis.path.empty()) continue;
      const YAML::Node& v = axis.values[value_of[a]];
      const std::string where = absl::StrCat("matrix.", axis.name, "[", value_of[a], "]");
      KVSCOPE_RETURN_IF_ERROR(
          SetPath(&root_node, axis, 0, v, v.IsNull() ? axis.key_mark : v.Mark(), where));
    }
    TrialWriter writer;
    writer.EmitEntries(root_node, 0, "");
    // The placement's backend is also the bench's: `kvscope bench` runs the GPU engine.
    if (backend == "cuda") {
      writer.Line(0, "backend: cuda",
                  {"backend", YAML::Mark::null_mark(), YAML::Mark::null_mark(), ""});
    }
    const std::string body = writer.text();
    writer.Line(0, absl::StrCat("seed: ", sweep.seed), {"seed", seed_mark_, seed_mark_, ""});
    const std::string point_label = absl::StrJoin(label_parts, " ");
    engine::BenchConfig config;
    KVSCOPE_RETURN_IF_ERROR(ValidatePoint(writer, point_label, &config));

    total_bytes += static_cast<int64_t>(body.size() + 32) * sweep.repeats;
    if (total_bytes > limits_.max_total_config_bytes) {
      return At(YAML::Mark::null_mark(),
                absl::StrCat("the trials' configurations would take more than ",
                             limits_.max_total_config_bytes,
                             " bytes (the limit); make the "
                             "base trial or the sweep smaller"));
    }
    TrialRequirements req;
    req.backend = backend;
    req.nodes = std::max(1, config.nodes);
    req.gpus = backend == "cuda" ? config.tp / req.nodes : 0;
    req.cpu_threads = config.threads;
    if (config.model.rfind("preset:", 0) != 0) req.model_path = config.model;
    for (int32_t r = 0; r < sweep.repeats; ++r) {
      TrialSpec& t = sweep.trials[static_cast<size_t>(r * points + p)];
      t.index = r * points + p;
      t.repeat = r;
      t.seed = sweep.seed + static_cast<uint64_t>(r);
      t.axes = axes_json;
      t.label = label_parts.empty() ? absl::StrCat("repeat=", r)
                                    : absl::StrCat(point_label, " repeat=", r);
      t.config_yaml = absl::StrCat(body, "seed: ", t.seed, "\n");
      t.requirements = req;
    }
    // Next point: the last dimension varies fastest.
    for (size_t d = dims_.size(); d-- > 0;) {
      if (++counter[d] < axes_[dims_[d][0]].values.size()) break;
      counter[d] = 0;
    }
  }
  return sweep;
}

}  // namespace

absl::StatusOr<Sweep> ParseSweep(const std::string& yaml_text, const std::string& source,
                                 const SweepLimits& limits) {
  SweepParser parser(source.empty() ? "<sweep>" : source, limits);
  return parser.Parse(yaml_text);
}

}  // namespace kvscope::coordinator
