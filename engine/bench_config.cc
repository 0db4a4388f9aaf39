#include "engine/bench_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <exception>
#include <functional>
#include <initializer_list>
#include <limits>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "engine/yaml_document.h"

namespace kvscope::engine {
namespace {

// --- Enum names ---------------------------------------------------------------------------

template <typename E>
struct EnumName {
  E value;
  const char* name;
};

constexpr EnumName<ArrivalKind> kArrivalNames[] = {
    {ArrivalKind::kAllAtOnce, "all"},      {ArrivalKind::kPoisson, "poisson"},
    {ArrivalKind::kGamma, "gamma"},        {ArrivalKind::kConstant, "constant"},
    {ArrivalKind::kClosedLoop, "closed"},  {ArrivalKind::kTrace, "trace"}};
constexpr EnumName<FaultKind> kFaultKindNames[] = {{FaultKind::kAbort, "abort"},
                                                   {FaultKind::kKill, "kill"},
                                                   {FaultKind::kExit, "exit"}};
constexpr EnumName<LengthDist> kLengthDistNames[] = {{LengthDist::kFixed, "fixed"},
                                                     {LengthDist::kUniform, "uniform"},
                                                     {LengthDist::kNormal, "normal"},
                                                     {LengthDist::kLognormal, "lognormal"}};
constexpr EnumName<SourceKind> kSourceNames[] = {{SourceKind::kRandom, "random"},
                                                 {SourceKind::kText, "text"},
                                                 {SourceKind::kTrace, "trace"},
                                                 {SourceKind::kSharedPrefix, "shared-prefix"},
                                                 {SourceKind::kMultiTurn, "multi-turn"}};

template <typename E, size_t N>
std::string AllowedNames(const EnumName<E> (&table)[N]) {
  std::vector<std::string> names;
  for (const EnumName<E>& e : table) names.push_back(e.name);
  return absl::StrJoin(names, ", ");
}

template <typename E, size_t N>
std::optional<E> LookupName(const EnumName<E> (&table)[N], const std::string& text) {
  for (const EnumName<E>& e : table) {
    if (text == e.name) return e.value;
  }
  return std::nullopt;
}

template <typename E, size_t N>
std::string NameOf(const EnumName<E> (&table)[N], E value) {
  for (const EnumName<E>& e : table) {
    if (e.value == value) return e.name;
  }
  return absl::StrCat("unknown(", static_cast<int>(value), ")");
}

template <typename E, size_t N>
absl::StatusOr<E> ParseName(const EnumName<E> (&table)[N], const char* what,
                            const std::string& text) {
  if (std::optional<E> value = LookupName(table, text)) return *value;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown ", what, " '", text, "'; allowed: ", AllowedNames(table)));
}

bool IsRated(ArrivalKind kind) {
  return kind == ArrivalKind::kPoisson || kind == ArrivalKind::kGamma ||
         kind == ArrivalKind::kConstant;
}

// --- YAML reading -------------------------------------------------------------------------

// One value in the document: its dotted key path ("workload.input_len.dist"), the node, and
// where its key is (errors cite that line).
struct Field {
  std::string path;
  YAML::Node node;
  YAML::Mark mark;
};

// How a node reads in an error: 'text', a map, a list, nothing.
std::string Found(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      return absl::StrCat("'", node.Scalar(), "'");
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

bool IsInfText(const std::string& text) {
  const std::string lower = absl::AsciiStrToLower(text);
  return lower == "inf" || lower == ".inf" || lower == "+inf" || lower == "+.inf" ||
         lower == "infinity";
}

// Reads one document into a BenchConfig. Not reusable across documents.
class ConfigReader {
 public:
  explicit ConfigReader(std::string source) : source_(std::move(source)) {}

  absl::Status Read(const YAML::Node& root, BenchConfig* c);

  // "SOURCE:LINE: message" (lines are 1-based; no line when yaml-cpp has none).
  absl::Status ErrorAt(const YAML::Mark& mark, const std::string& message) const {
    if (mark.is_null() || mark.line < 0) {
      return absl::InvalidArgumentError(absl::StrCat(source_, ": ", message));
    }
    return absl::InvalidArgumentError(absl::StrCat(source_, ":", mark.line + 1, ": ", message));
  }

 private:
  using Handler = std::function<absl::Status(const std::string& key, const Field& field)>;

  absl::Status KeyError(const Field& f, const std::string& message) const {
    return ErrorAt(f.mark, absl::StrCat("key '", f.path, "': ", message));
  }
  absl::Status Expected(const Field& f, const std::string& what) const {
    return KeyError(f, absl::StrCat("expected ", what, ", found ", Found(f.node)));
  }

  // Calls `handle` for each entry of the map `f` (null counts as an empty map). Duplicate
  // keys, non-scalar keys and, when `allowed` is given, keys outside it (and outside
  // `unlisted`: accepted, but not named in errors, e.g. the test-only `fault`) are errors.
  absl::Status ForEachEntry(const Field& f, const std::vector<std::string>* allowed,
                            const std::string& hint, const Handler& handle,
                            const std::vector<std::string>* unlisted = nullptr) const;

  absl::Status GetString(const Field& f, std::string* out) const {
    if (!f.node.IsScalar()) return Expected(f, "a string");
    *out = f.node.Scalar();
    return absl::OkStatus();
  }
  absl::Status GetInt(const Field& f, int64_t lo, int64_t hi, int64_t* out) const {
    int64_t value;
    if (!f.node.IsScalar() || !absl::SimpleAtoi(f.node.Scalar(), &value)) {
      return Expected(f, "an integer");
    }
    if (value < lo || value > hi) {
      return KeyError(f, absl::StrCat("expected an integer in [", lo, ", ", hi, "], found ",
                                      Found(f.node)));
    }
    *out = value;
    return absl::OkStatus();
  }
  absl::Status GetInt32(const Field& f, int32_t* out) const {
    int64_t value;
    KVSCOPE_RETURN_IF_ERROR(GetInt(f, std::numeric_limits<int32_t>::min(),
                                   std::numeric_limits<int32_t>::max(), &value));
    *out = static_cast<int32_t>(value);
    return absl::OkStatus();
  }
  absl::Status GetInt64(const Field& f, int64_t* out) const {
    return GetInt(f, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(),
                  out);
  }
  absl::Status GetUint64(const Field& f, uint64_t* out) const {
    uint64_t value;
    if (!f.node.IsScalar() || f.node.Scalar().find('-') != std::string::npos ||
        !absl::SimpleAtoi(f.node.Scalar(), &value)) {
      return Expected(f, "an integer >= 0");
    }
    *out = value;
    return absl::OkStatus();
  }
  // A finite number.
  absl::Status GetDouble(const Field& f, double* out) const {
    double value;
    if (!f.node.IsScalar() || IsInfText(f.node.Scalar()) ||
        !absl::SimpleAtod(f.node.Scalar(), &value) || !std::isfinite(value)) {
      return Expected(f, "a number");
    }
    *out = value;
    return absl::OkStatus();
  }
  absl::Status GetBool(const Field& f, bool* out) const {
    if (f.node.IsScalar()) {
      const std::string text = absl::AsciiStrToLower(f.node.Scalar());
      if (text == "true" || text == "yes" || text == "on") {
        *out = true;
        return absl::OkStatus();
      }
      if (text == "false" || text == "no" || text == "off") {
        *out = false;
        return absl::OkStatus();
      }
    }
    return Expected(f, "true or false");
  }
  template <typename E, size_t N>
  absl::Status GetEnum(const Field& f, const EnumName<E> (&table)[N], E* out) const {
    if (!f.node.IsScalar()) return Expected(f, absl::StrCat("one of ", AllowedNames(table)));
    if (std::optional<E> value = LookupName(table, f.node.Scalar())) {
      *out = *value;
      return absl::OkStatus();
    }
    return KeyError(f, absl::StrCat("found ", Found(f.node), ", allowed: ", AllowedNames(table)));
  }
  // A rate > 0, or inf (returned as +infinity).
  absl::Status GetRate(const Field& f, double* out) const {
    if (f.node.IsScalar() && IsInfText(f.node.Scalar())) {
      *out = std::numeric_limits<double>::infinity();
      return absl::OkStatus();
    }
    double value;
    if (!f.node.IsScalar() || !absl::SimpleAtod(f.node.Scalar(), &value) ||
        std::isnan(value)) {
      return Expected(f, "a number or inf");
    }
    if (!(value > 0)) {
      return KeyError(f, absl::StrCat("request_rate must be > 0 or inf, found ", Found(f.node)));
    }
    *out = value;
    return absl::OkStatus();
  }

  absl::Status ReadModel(const Field& f, BenchConfig* c) const;
  absl::Status ReadStrategy(const Field& f, BenchConfig* c) const;
  absl::Status ReadMemory(const Field& f, BenchConfig* c) const;
  absl::Status ReadWorkload(const Field& f, BenchConfig* c);
  absl::Status ReadLength(const Field& f, LengthSpec* spec) const;
  absl::Status ReadScheduler(const Field& f, SchedulerOptions* s) const;
  absl::Status ReadGoodput(const Field& f, SloSpec* slo) const;
  absl::Status ReadFault(const Field& f, BenchFault* fault) const;
  absl::Status ReadGpu(const Field& f, BenchConfig* c) const;

  std::string source_;
  std::optional<ArrivalKind> arrival_;       // workload.arrival, when given
  std::optional<double> workload_rate_;      // workload.request_rate (+inf for inf)
  std::optional<double> top_rate_;           // request_rate at the top level
};

absl::Status ConfigReader::ForEachEntry(const Field& f, const std::vector<std::string>* allowed,
                                        const std::string& hint, const Handler& handle,
                                        const std::vector<std::string>* unlisted) const {
  if (f.node.IsNull()) return absl::OkStatus();
  if (!f.node.IsMap()) return Expected(f, "a map");
  std::set<std::string> seen;
  for (const auto& entry : f.node) {
    const YAML::Node key = entry.first;
    const YAML::Mark key_mark = key.Mark();
    if (!key.IsScalar()) {
      return ErrorAt(key_mark, absl::StrCat("expected a plain key in '", f.path, "', found ",
                                            Found(key)));
    }
    const std::string name = key.Scalar();
    const std::string path = f.path.empty() ? name : absl::StrCat(f.path, ".", name);
    if (allowed != nullptr) {
      bool known = false;
      for (const std::string& a : *allowed) known = known || a == name;
      if (unlisted != nullptr) {
        for (const std::string& a : *unlisted) known = known || a == name;
      }
      if (!known) {
        return ErrorAt(key_mark, absl::StrCat("unknown key '", path, "'; allowed: ",
                                              absl::StrJoin(*allowed, ", "),
                                              name == "preemption_mode" ? hint : ""));
      }
    }
    if (!seen.insert(name).second) {
      return ErrorAt(key_mark, absl::StrCat("key '", path, "' is given twice"));
    }
    // Errors point at the key: a null value has the next token's mark, and a block map or
    // list starts on the line after its key.
    KVSCOPE_RETURN_IF_ERROR(handle(name, Field{path, entry.second, key_mark}));
  }
  return absl::OkStatus();
}

absl::Status ConfigReader::Read(const YAML::Node& root, BenchConfig* c) {
  static const std::vector<std::string> kTop = {
      "model", "strategy", "memory", "workload",     "scheduler", "goodput", "tp",
      "nodes", "threads", "seed",   "out",    "request_rate", "backend",   "gpu"};
  static const std::vector<std::string> kTestOnly = {"fault"};  // docs/bench.md
  const Field top{"", root, root.Mark()};
  if (!root.IsNull() && !root.IsMap()) {
    return ErrorAt(root.Mark(), absl::StrCat("expected a map with the keys ",
                                             absl::StrJoin(kTop, ", "), ", found ", Found(root)));
  }
  KVSCOPE_RETURN_IF_ERROR(ForEachEntry(
      top, &kTop, "", [&](const std::string& key, const Field& f) -> absl::Status {
        if (key == "model") return ReadModel(f, c);
        if (key == "strategy") return ReadStrategy(f, c);
        if (key == "memory") return ReadMemory(f, c);
        if (key == "workload") return ReadWorkload(f, c);
        if (key == "scheduler") return ReadScheduler(f, &c->scheduler);
        if (key == "goodput") return ReadGoodput(f, &c->slo);
        if (key == "tp") return GetInt32(f, &c->tp);
        if (key == "nodes") return GetInt32(f, &c->nodes);
        if (key == "threads") return GetInt32(f, &c->threads);
        if (key == "seed") return GetUint64(f, &c->workload.seed);
        if (key == "out") return GetString(f, &c->out_dir);
        if (key == "fault") return ReadFault(f, &c->fault);
        if (key == "backend") return GetString(f, &c->backend);
        if (key == "gpu") return ReadGpu(f, c);
        double rate;
        KVSCOPE_RETURN_IF_ERROR(GetRate(f, &rate));
        top_rate_ = rate;
        return absl::OkStatus();
      },
      &kTestOnly));

  // Arrival and rate are settled together: the top-level rate (a sweep's) wins over the
  // workload's; inf means all at t=0 unless the arrival ignores rates (closed, trace); a
  // finite rate without an arrival in the text turns "all" into poisson.
  WorkloadSpec& w = c->workload;
  if (arrival_) w.arrival = *arrival_;
  const std::optional<double> rate = top_rate_ ? top_rate_ : workload_rate_;
  if (rate) {
    if (std::isinf(*rate)) {
      w.request_rate = 0;
      if (!arrival_ || IsRated(*arrival_)) w.arrival = ArrivalKind::kAllAtOnce;
    } else {
      w.request_rate = *rate;
      if (!arrival_ && w.arrival == ArrivalKind::kAllAtOnce) w.arrival = ArrivalKind::kPoisson;
    }
  }
  return absl::OkStatus();
}

absl::Status ConfigReader::ReadModel(const Field& f, BenchConfig* c) const {
  // `model: DIR|preset:NAME` (as --model) or a map.
  if (f.node.IsScalar()) return GetString(f, &c->model);
  static const std::vector<std::string> kKeys = {"preset", "path", "weights_seed"};
  std::optional<std::string> preset, path;
  KVSCOPE_RETURN_IF_ERROR(ForEachEntry(
      f, &kKeys, "", [&](const std::string& key, const Field& v) -> absl::Status {
        if (key == "weights_seed") return GetUint64(v, &c->weights_seed);
        std::string text;
        KVSCOPE_RETURN_IF_ERROR(GetString(v, &text));
        (key == "preset" ? preset : path) = text;
        return absl::OkStatus();
      }));
  if (preset.has_value() == path.has_value()) {
    return KeyError(f, "give exactly one of 'preset' (a preset name) or 'path' (a model "
                       "directory)");
  }
  c->model = preset ? absl::StrCat("preset:", *preset) : *path;
  return absl::OkStatus();
}

absl::Status ConfigReader::ReadStrategy(const Field& f, BenchConfig* c) const {
  // A new strategy replaces the parameters of the old one.
  c->strategy_params.clear();
  if (f.node.IsScalar()) return GetString(f, &c->strategy);
  std::optional<std::string> name;
  KVSCOPE_RETURN_IF_ERROR(ForEachEntry(
      f, nullptr, "", [&](const std::string& key, const Field& v) -> absl::Status {
        std::string text;
        if (!v.node.IsScalar()) {
          return Expected(v, key == "name" ? "a strategy name" : "a scalar parameter value");
        }
        KVSCOPE_RETURN_IF_ERROR(GetString(v, &text));
        if (key == "name") {
          name = text;
        } else {
          c->strategy_params[key] = text;
        }
        return absl::OkStatus();
      }));
  if (!name) {
    return KeyError(f, "missing 'name' (e.g. strategy: {name: paged, block_size: 16})");
  }
  c->strategy = *name;
  return absl::OkStatus();
}

absl::Status ConfigReader::ReadMemory(const Field& f, BenchConfig* c) const {
  static const std::vector<std::string> kKeys = {"kv_bytes"};
  return ForEachEntry(f, &kKeys, "", [&](const std::string&, const Field& v) -> absl::Status {
    if (!v.node.IsScalar()) return Expected(v, "a byte size (e.g. 64MiB or 67108864)");
    absl::StatusOr<int64_t> bytes = ParseBytes(v.node.Scalar());
    if (!bytes.ok()) return KeyError(v, std::string(bytes.status().message()));
    c->kv_memory_bytes = *bytes;
    return absl::OkStatus();
  });
}

absl::Status ConfigReader::ReadLength(const Field& f, LengthSpec* spec) const {
  if (f.node.IsScalar()) {
    // `input_len: N`: exactly N tokens.
    int64_t n;
    KVSCOPE_RETURN_IF_ERROR(GetInt64(f, &n));
    *spec = LengthSpec{};
    spec->mean = static_cast<double>(n);
    return absl::OkStatus();
  }
  static const std::vector<std::string> kKeys = {"dist", "mean", "spread", "min", "max"};
  return ForEachEntry(f, &kKeys, "", [&](const std::string& key, const Field& v) -> absl::Status {
    if (key == "dist") return GetEnum(v, kLengthDistNames, &spec->dist);
    if (key == "mean") return GetDouble(v, &spec->mean);
    if (key == "spread") return GetDouble(v, &spec->spread);
    if (key == "min") return GetInt64(v, &spec->min);
    return GetInt64(v, &spec->max);
  });
}

absl::Status ConfigReader::ReadWorkload(const Field& f, BenchConfig* c) {
  static const std::vector<std::string> kKeys = {
      "num_requests", "arrival",     "request_rate",       "burstiness",
      "concurrency",  "input_len",   "output_len",         "ignore_eos",
      "dataset",      "text",        "trace",              "trace_block_tokens",
      "trace_time_scale", "prefix_groups", "prefix_len",   "turns",
      "think_time",   "first_token_id"};
  WorkloadSpec& w = c->workload;
  return ForEachEntry(f, &kKeys, "", [&](const std::string& key, const Field& v) -> absl::Status {
    if (key == "num_requests") return GetInt64(v, &w.num_requests);
    if (key == "arrival") {
      ArrivalKind kind;
      KVSCOPE_RETURN_IF_ERROR(GetEnum(v, kArrivalNames, &kind));
      arrival_ = kind;
      return absl::OkStatus();
    }
    if (key == "request_rate") {
      double rate;
      KVSCOPE_RETURN_IF_ERROR(GetRate(v, &rate));
      workload_rate_ = rate;
      return absl::OkStatus();
    }
    if (key == "burstiness") return GetDouble(v, &w.burstiness);
    if (key == "concurrency") return GetInt32(v, &w.concurrency);
    if (key == "input_len") return ReadLength(v, &w.input_len);
    if (key == "output_len") return ReadLength(v, &w.output_len);
    if (key == "ignore_eos") return GetBool(v, &w.ignore_eos);
    if (key == "dataset") return GetEnum(v, kSourceNames, &w.source);
    if (key == "text") return GetString(v, &w.text_path);
    if (key == "trace") return GetString(v, &w.trace_path);
    if (key == "trace_block_tokens") return GetInt32(v, &w.trace_block_tokens);
    if (key == "trace_time_scale") return GetDouble(v, &w.trace_time_scale);
    if (key == "prefix_groups") return GetInt32(v, &w.num_prefix_groups);
    if (key == "prefix_len") return GetInt64(v, &w.shared_prefix_len);
    if (key == "turns") return GetInt32(v, &w.turns);
    if (key == "think_time") return GetDouble(v, &w.think_time_s);
    return GetInt32(v, &w.first_token_id);
  });
}

absl::Status ConfigReader::ReadScheduler(const Field& f, SchedulerOptions* s) const {
  static const std::vector<std::string> kKeys = {"max_num_seqs", "max_num_batched_tokens",
                                                 "chunked_prefill", "max_model_len"};
  return ForEachEntry(
      f, &kKeys,
      " (preemption_mode is a strategy parameter: strategy: {name: ..., preemption_mode: swap})",
      [&](const std::string& key, const Field& v) -> absl::Status {
        if (key == "max_num_seqs") return GetInt32(v, &s->max_num_seqs);
        if (key == "max_num_batched_tokens") return GetInt64(v, &s->max_num_batched_tokens);
        if (key == "chunked_prefill") return GetBool(v, &s->chunked_prefill);
        return GetInt64(v, &s->max_model_len);
      });
}

absl::Status ConfigReader::ReadGoodput(const Field& f, SloSpec* slo) const {
  static const std::vector<std::string> kKeys = {"ttft_ms", "tpot_ms", "e2el_ms"};
  return ForEachEntry(f, &kKeys, "", [&](const std::string& key, const Field& v) -> absl::Status {
    std::optional<double>& target =
        key == "ttft_ms" ? slo->ttft_ms : key == "tpot_ms" ? slo->tpot_ms : slo->e2el_ms;
    if (v.node.IsNull()) {  // `ttft_ms: null` drops the objective
      target.reset();
      return absl::OkStatus();
    }
    double ms;
    KVSCOPE_RETURN_IF_ERROR(GetDouble(v, &ms));
    if (!(ms > 0)) {
      return KeyError(v, absl::StrCat("objectives must be > 0 ms, found ", Found(v.node)));
    }
    target = ms;
    return absl::OkStatus();
  });
}

absl::Status ConfigReader::ReadFault(const Field& f, BenchFault* fault) const {
  // Test-only: `fault: {exit_after_requests: N, kind: abort|kill|exit}`.
  static const std::vector<std::string> kKeys = {"exit_after_requests", "kind"};
  BenchFault parsed;
  parsed.kind = FaultKind::kAbort;
  KVSCOPE_RETURN_IF_ERROR(ForEachEntry(
      f, &kKeys, "", [&](const std::string& key, const Field& v) -> absl::Status {
        if (key == "kind") return GetEnum(v, kFaultKindNames, &parsed.kind);
        return GetInt(v, 0, std::numeric_limits<int64_t>::max(), &parsed.exit_after_requests);
      }));
  if (f.node.IsNull()) parsed.kind = FaultKind::kNone;  // `fault:` with nothing: no fault
  *fault = parsed;
  return absl::OkStatus();
}

absl::Status ConfigReader::ReadGpu(const Field& f, BenchConfig* c) const {
  // `gpu: {dtype: bf16|fp16|f32, cuda_graphs: bool}` (backend cuda).
  static const std::vector<std::string> kKeys = {"dtype", "cuda_graphs"};
  return ForEachEntry(f, &kKeys, "", [&](const std::string& key, const Field& v) -> absl::Status {
    if (key == "dtype") return GetString(v, &c->gpu_dtype);
    return GetBool(v, &c->cuda_graphs);
  });
}

absl::Status Invalid(const std::string& message) {
  return absl::InvalidArgumentError(message);
}

nlohmann::json LengthToJson(const LengthSpec& s) {
  return {{"dist", LengthDistName(s.dist)}, {"mean", s.mean}, {"spread", s.spread},
          {"min", s.min},                   {"max", s.max}};
}

nlohmann::json OptionalMs(const std::optional<double>& ms) {
  return ms ? nlohmann::json(*ms) : nlohmann::json(nullptr);
}

}  // namespace

absl::Status ParseBenchConfigYaml(const std::string& yaml_text, const std::string& source,
                                  BenchConfig* config) {
  ConfigReader reader(source.empty() ? "<yaml>" : source);
  // Parsed into a copy: on error `config` is left as it was.
  BenchConfig parsed = *config;
  try {
    // Not YAML::LoadAll, which can loop forever (engine/yaml_document.h).
    const YamlDocumentCheck check = CheckYamlDocuments(yaml_text);
    if (check.stuck_at) return reader.ErrorAt(*check.stuck_at, check.stuck_message);
    if (check.documents > 1) {
      return reader.ErrorAt(check.second_start,
                            absl::StrCat("expected one YAML document, found ",
                                         check.documents >= 100 ? std::string("100 or more")
                                                                : absl::StrCat(check.documents)));
    }
    if (check.documents == 1) KVSCOPE_RETURN_IF_ERROR(reader.Read(YAML::Load(yaml_text), &parsed));
  } catch (const YAML::Exception& e) {
    // NOTE: e.what() repeats the mark as "yaml-cpp: error at line L, column C: msg".
    return reader.ErrorAt(e.mark, absl::StrCat("malformed YAML: ", e.msg));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(source, ": reading YAML failed: ", e.what()));
  }
  *config = std::move(parsed);
  return absl::OkStatus();
}

absl::Status CheckBenchConfigRunnable(const BenchConfig& c) {
#if !KVSCOPE_WITH_CUDA
  if (c.backend == "cuda") {
    return absl::FailedPreconditionError(
        "backend: cuda, but this kvscope was built without CUDA (configure with "
        "-DKVSCOPE_CUDA=ON on a machine with the CUDA toolkit, or use backend: cpu)");
  }
#endif
  return absl::OkStatus();
}

absl::Status ValidateBenchConfig(const BenchConfig& c) {
  if (c.backend != "cpu" && c.backend != "cuda") {
    return Invalid(absl::StrCat("backend: found '", c.backend, "', allowed: cpu, cuda"));
  }
  if (c.gpu_dtype != "bf16" && c.gpu_dtype != "fp16" && c.gpu_dtype != "f32") {
    return Invalid(
        absl::StrCat("gpu.dtype: found '", c.gpu_dtype, "', allowed: bf16, fp16, f32"));
  }
  if (c.model.empty()) {
    return Invalid("model: give a model directory or preset:NAME (--model, or model: in the "
                   "config)");
  }
  if (c.strategy.empty()) return Invalid("strategy: give a KV strategy name");
  if (c.kv_memory_bytes <= 0) {
    return Invalid(absl::StrCat("kv_memory_bytes must be > 0, got ", c.kv_memory_bytes));
  }
  if (c.tp < 1) return Invalid(absl::StrCat("tp must be >= 1, got ", c.tp));
  if (c.nodes < 1) {
    return Invalid(absl::StrCat("nodes must be >= 1 (worker processes of the tensor-parallel "
                                "group), got ", c.nodes));
  }
  if (c.tp % c.nodes != 0) {
    return Invalid(absl::StrCat("nodes must divide tp (each process runs tp / nodes ranks), "
                                "got nodes ", c.nodes, " and tp ", c.tp));
  }
  if (c.threads < 0) {
    return Invalid(absl::StrCat("threads must be >= 0 (0 = every core), got ", c.threads));
  }
  const WorkloadSpec& w = c.workload;
  if (std::isnan(w.request_rate) || w.request_rate < 0) {
    return Invalid(absl::StrCat("request_rate must be > 0 or inf, got ", w.request_rate));
  }
  KVSCOPE_RETURN_IF_ERROR(ValidateWorkloadSpec(w));
  // max_model_len 0 is filled from the model later; check the other limits with a stand-in
  // that passes the max_model_len checks.
  SchedulerOptions s = c.scheduler;
  if (s.max_model_len == 0) {
    s.max_model_len = s.chunked_prefill ? 2 : std::max<int64_t>(2, s.max_num_batched_tokens);
  }
  KVSCOPE_RETURN_IF_ERROR(ValidateSchedulerOptions(s));
  auto check_objective = [](const char* name, const std::optional<double>& ms) {
    if (ms && !(std::isfinite(*ms) && *ms > 0)) {
      return Invalid(absl::StrCat("goodput ", name, " must be > 0, got ", *ms));
    }
    return absl::OkStatus();
  };
  KVSCOPE_RETURN_IF_ERROR(check_objective("ttft_ms", c.slo.ttft_ms));
  KVSCOPE_RETURN_IF_ERROR(check_objective("tpot_ms", c.slo.tpot_ms));
  KVSCOPE_RETURN_IF_ERROR(check_objective("e2el_ms", c.slo.e2el_ms));
  if (c.out_dir.empty()) {
    return Invalid("out: give an output directory (--out, or out: in the config)");
  }
  return absl::OkStatus();
}

nlohmann::json BenchConfigToJson(const BenchConfig& c) {
  const WorkloadSpec& w = c.workload;
  nlohmann::json strategy_params = nlohmann::json::object();
  for (const auto& [key, value] : c.strategy_params) strategy_params[key] = value;
  nlohmann::json workload = {
      {"num_requests", w.num_requests},
      {"arrival", ArrivalKindName(w.arrival)},
      // All at once has no finite rate; JSON has no infinity.
      {"request_rate", w.arrival == ArrivalKind::kAllAtOnce ? nlohmann::json("inf")
                                                             : nlohmann::json(w.request_rate)},
      {"burstiness", w.burstiness},
      {"concurrency", w.concurrency},
      {"input_len", LengthToJson(w.input_len)},
      {"output_len", LengthToJson(w.output_len)},
      {"ignore_eos", w.ignore_eos},
      {"dataset", SourceKindName(w.source)},
      {"text", w.text_path},
      {"trace", w.trace_path},
      {"trace_block_tokens", w.trace_block_tokens},
      {"trace_time_scale", w.trace_time_scale},
      {"prefix_groups", w.num_prefix_groups},
      {"prefix_len", w.shared_prefix_len},
      {"random_prefix_group", w.random_prefix_group},
      {"turns", w.turns},
      {"think_time", w.think_time_s},
      {"think_time_fixed", w.think_time_fixed},
      {"vocab_size", w.vocab_size},
      {"first_token_id", w.first_token_id},
      {"max_model_len", w.max_model_len},
  };
  const SchedulerOptions& s = c.scheduler;
  nlohmann::json scheduler = {
      {"max_num_seqs", s.max_num_seqs},
      {"max_num_batched_tokens", s.max_num_batched_tokens},
      {"chunked_prefill", s.chunked_prefill},
      {"max_model_len", s.max_model_len},
  };
  nlohmann::json slo = {{"ttft_ms", OptionalMs(c.slo.ttft_ms)},
                        {"tpot_ms", OptionalMs(c.slo.tpot_ms)},
                        {"e2el_ms", OptionalMs(c.slo.e2el_ms)}};
  nlohmann::json config = {{"model", c.model},
                            {"weights_seed", c.weights_seed},
                            {"strategy", c.strategy},
                            {"strategy_params", std::move(strategy_params)},
                            {"kv_memory_bytes", c.kv_memory_bytes},
                            {"tp", c.tp},
                            {"threads", c.threads},
                            {"backend", c.backend},
                            {"seed", w.seed},
                            {"workload", std::move(workload)},
                            {"scheduler", std::move(scheduler)},
                            {"slo", std::move(slo)},
                            {"out_dir", c.out_dir}};
  if (c.backend == "cuda") config["gpu"] = {{"dtype", c.gpu_dtype}, {"cuda_graphs", c.cuda_graphs}};
  // Only for gangs, so that single-process results keep their exact config.
  if (c.nodes != 1) config["nodes"] = c.nodes;
  if (c.fault.kind != FaultKind::kNone) {  // test-only; absent from ordinary runs
    config["fault"] = {{"kind", FaultKindName(c.fault.kind)},
                       {"exit_after_requests", c.fault.exit_after_requests}};
  }
  return config;
}

absl::StatusOr<ArrivalKind> ParseArrivalKind(const std::string& text) {
  return ParseName(kArrivalNames, "arrival", text);
}
absl::StatusOr<LengthDist> ParseLengthDist(const std::string& text) {
  return ParseName(kLengthDistNames, "length distribution", text);
}
absl::StatusOr<SourceKind> ParseSourceKind(const std::string& text) {
  return ParseName(kSourceNames, "dataset", text);
}
std::string ArrivalKindName(ArrivalKind kind) { return NameOf(kArrivalNames, kind); }
std::string LengthDistName(LengthDist dist) { return NameOf(kLengthDistNames, dist); }
std::string SourceKindName(SourceKind kind) { return NameOf(kSourceNames, kind); }
std::string FaultKindName(FaultKind kind) {
  return kind == FaultKind::kNone ? "none" : NameOf(kFaultKindNames, kind);
}

}  // namespace kvscope::engine
