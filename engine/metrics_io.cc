// result.json / requests.jsonl: writing (WriteResult) and checking (Validate*Json).
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <exception>
#include <filesystem>
#include <string>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "engine/metrics.h"

namespace kvscope::engine {
namespace {

// NOTE: `replace` keeps invalid UTF-8 in error messages or config strings from throwing.
std::string Dump(const nlohmann::json& j, int indent) {
  return j.dump(indent, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
}

// `j` dumped with 2-space indentation, nested `levels` deep in the enclosing document.
std::string DumpNested(const nlohmann::json& j, int levels) {
  return absl::StrReplaceAll(Dump(j, 2), {{"\n", "\n" + std::string(2 * levels, ' ')}});
}

absl::Status WriteAll(int fd, const std::string& content, const std::string& path) {
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("writing ", path));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("syncing ", path));
  return absl::OkStatus();
}

// Writes `content` to PATH.tmp.<pid> and renames it to `path`; removes the temporary on error.
absl::Status WriteFileAtomically(const std::string& path, const std::string& content) {
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("creating ", tmp));
  absl::Status status = WriteAll(fd, content, tmp);
  if (::close(fd) != 0 && status.ok()) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("closing ", tmp));
  }
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("renaming ", tmp, " to ", path));
  }
  if (!status.ok()) ::unlink(tmp.c_str());
  return status;
}

std::string RequestsJsonl(const std::vector<RequestRecord>& requests) {
  std::string out;
  for (const RequestRecord& r : requests) {
    out += Dump(RequestToJson(r), -1);
    out += '\n';
  }
  return out;
}

// result.json with one step per line, so long timelines stay small and diffable.
std::string ResultJson(const ResultDocument& doc) {
  const auto object_or_empty = [](const nlohmann::json& j) {
    return j.is_null() ? nlohmann::json::object() : j;
  };
  std::string out = "{\n";
  absl::StrAppend(&out, "  \"schema_version\": ", kResultSchemaVersion, ",\n");
  absl::StrAppend(&out, "  \"complete\": ", doc.complete ? "true" : "false", ",\n");
  absl::StrAppend(&out, "  \"status_message\": ", Dump(doc.status_message, -1), ",\n");
  absl::StrAppend(&out, "  \"config\": ", DumpNested(object_or_empty(doc.config), 1), ",\n");
  absl::StrAppend(&out, "  \"environment\": ", DumpNested(object_or_empty(doc.environment), 1),
                  ",\n");
  absl::StrAppend(&out, "  \"summary\": ", DumpNested(SummaryToJson(doc.summary), 1), ",\n");
  out += "  \"timelines\": {\n    \"steps\": [";
  for (size_t i = 0; i < doc.steps.size(); ++i) {
    absl::StrAppend(&out, i == 0 ? "\n      " : ",\n      ", Dump(StepToJson(doc.steps[i]), -1));
  }
  out += doc.steps.empty() ? "]\n  }\n}\n" : "\n    ]\n  }\n}\n";
  return out;
}

// --- Validation -------------------------------------------------------------------------

enum class Kind {
  kInteger,
  kNumber,
  kNumberOrNull,
  kRate,  // number or the string "inf"
  kBool,
  kString,
  kObject,
  kArray,
};

struct Field {
  const char* key;
  Kind kind;
};

const char* KindName(Kind kind) {
  switch (kind) {
    case Kind::kInteger:
      return "integer";
    case Kind::kNumber:
      return "number";
    case Kind::kNumberOrNull:
      return "number or null";
    case Kind::kRate:
      return "number or \"inf\"";
    case Kind::kBool:
      return "boolean";
    case Kind::kString:
      return "string";
    case Kind::kObject:
      return "object";
    case Kind::kArray:
      return "array";
  }
  return "?";
}

bool HasKind(const nlohmann::json& v, Kind kind) {
  switch (kind) {
    case Kind::kInteger:
      return v.is_number_integer();
    case Kind::kNumber:
      return v.is_number();
    case Kind::kNumberOrNull:
      return v.is_number() || v.is_null();
    case Kind::kRate:
      return v.is_number() || (v.is_string() && v.get_ref<const std::string&>() == "inf");
    case Kind::kBool:
      return v.is_boolean();
    case Kind::kString:
      return v.is_string();
    case Kind::kObject:
      return v.is_object();
    case Kind::kArray:
      return v.is_array();
  }
  return false;
}

absl::Status CheckFields(const nlohmann::json& obj, const std::string& where,
                         std::initializer_list<Field> fields) {
  if (!obj.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where.empty() ? "document" : where,
                                                   ": expected an object, got ",
                                                   obj.type_name()));
  }
  for (const Field& f : fields) {
    const std::string path = where.empty() ? f.key : absl::StrCat(where, ".", f.key);
    const auto it = obj.find(f.key);
    if (it == obj.end()) return absl::InvalidArgumentError(absl::StrCat(path, ": missing"));
    if (!HasKind(*it, f.kind)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": expected ", KindName(f.kind),
                                                     ", got ", it->type_name()));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckSummary(const nlohmann::json& s) {
  absl::Status status = CheckFields(
      s, "summary",
      {{"completed", Kind::kInteger},
       {"failed", Kind::kInteger},
       {"duration", Kind::kNumber},
       {"total_input_tokens", Kind::kInteger},
       {"total_output_tokens", Kind::kInteger},
       {"request_throughput", Kind::kNumber},
       {"request_goodput", Kind::kNumberOrNull},
       {"output_throughput", Kind::kNumber},
       {"total_token_throughput", Kind::kNumber},
       {"target_request_rate", Kind::kRate},
       {"achieved_request_rate", Kind::kRate},
       {"peak_concurrency", Kind::kInteger},
       {"slo", Kind::kObject},
       {"peak_kv_reserved_bytes", Kind::kInteger},
       {"peak_kv_used_bytes", Kind::kInteger},
       {"kv_waste_fraction", Kind::kNumber},
       {"peak_host_kv_bytes", Kind::kInteger},
       {"peak_swapped_bytes", Kind::kInteger},
       {"preemptions", Kind::kInteger},
       {"num_steps", Kind::kInteger},
       {"mean_batch_size", Kind::kNumber},
       {"mean_tokens_per_step", Kind::kNumber},
       {"prefix_cache_hit_rate", Kind::kNumber},
       {"schedule_time_fraction", Kind::kNumber},
       {"forward_time_fraction", Kind::kNumber},
       {"sample_time_fraction", Kind::kNumber},
       {"quality_mean_kl", Kind::kNumberOrNull},
       {"quality_top1_agreement", Kind::kNumberOrNull}});
  if (!status.ok()) return status;
  status = CheckFields(s["slo"], "summary.slo",
                       {{"ttft_ms", Kind::kNumberOrNull},
                        {"tpot_ms", Kind::kNumberOrNull},
                        {"e2el_ms", Kind::kNumberOrNull}});
  if (!status.ok()) return status;
  for (const char* metric : {"ttft", "tpot", "itl", "e2el"}) {
    for (const char* stat : {"mean", "median", "std", "p50", "p90", "p95", "p99"}) {
      const std::string key = absl::StrCat(stat, "_", metric, "_ms");
      const auto it = s.find(key);
      if (it == s.end()) return absl::InvalidArgumentError(absl::StrCat("summary.", key, ": missing"));
      if (!it->is_number()) {
        return absl::InvalidArgumentError(
            absl::StrCat("summary.", key, ": expected number, got ", it->type_name()));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckStep(const nlohmann::json& step, const std::string& where) {
  return CheckFields(step, where,
                     {{"start_s", Kind::kNumber},
                      {"schedule_s", Kind::kNumber},
                      {"forward_s", Kind::kNumber},
                      {"sample_s", Kind::kNumber},
                      {"batch_size", Kind::kInteger},
                      {"num_tokens", Kind::kInteger},
                      {"prefill_tokens", Kind::kInteger},
                      {"decode_tokens", Kind::kInteger},
                      {"preemptions", Kind::kInteger},
                      {"running", Kind::kInteger},
                      {"waiting", Kind::kInteger},
                      {"swapped", Kind::kInteger},
                      {"kv_reserved_bytes", Kind::kInteger},
                      {"kv_used_bytes", Kind::kInteger},
                      {"host_kv_bytes", Kind::kInteger},
                      {"swapped_bytes", Kind::kInteger},
                      {"prefix_query_tokens", Kind::kInteger},
                      {"prefix_hit_tokens", Kind::kInteger}});
}

absl::Status CheckArrayOf(const nlohmann::json& array, const std::string& where,
                          bool (nlohmann::json::*is)() const noexcept, const char* what) {
  for (size_t i = 0; i < array.size(); ++i) {
    if (!(array[i].*is)()) {
      return absl::InvalidArgumentError(absl::StrCat(where, "[", i, "]: expected ", what,
                                                     ", got ", array[i].type_name()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteResult(const std::string& dir, const ResultDocument& doc) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::ErrnoToStatus(ec.value(),
                               absl::StrCat("creating result directory ", dir, ": ", ec.message()));
  }
  const std::string requests_path = (std::filesystem::path(dir) / "requests.jsonl").string();
  const std::string result_path = (std::filesystem::path(dir) / "result.json").string();
  std::string requests, result;
  try {
    requests = RequestsJsonl(doc.requests);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("serializing ", requests_path, ": ", e.what()));
  }
  try {
    result = ResultJson(doc);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("serializing ", result_path, ": ", e.what()));
  }
  absl::Status status = WriteFileAtomically(requests_path, requests);
  if (!status.ok()) return status;
  return WriteFileAtomically(result_path, result);
}

absl::Status ValidateResultJson(const nlohmann::json& result) {
  absl::Status status = CheckFields(result, "",
                                    {{"schema_version", Kind::kInteger},
                                     {"complete", Kind::kBool},
                                     {"status_message", Kind::kString},
                                     {"config", Kind::kObject},
                                     {"environment", Kind::kObject},
                                     {"summary", Kind::kObject},
                                     {"timelines", Kind::kObject}});
  if (!status.ok()) return status;
  if (result["schema_version"].get<int64_t>() != kResultSchemaVersion) {
    return absl::InvalidArgumentError(absl::StrCat("schema_version: expected ",
                                                   kResultSchemaVersion, ", got ",
                                                   Dump(result["schema_version"], -1)));
  }
  status = CheckSummary(result["summary"]);
  if (!status.ok()) return status;
  const nlohmann::json& timelines = result["timelines"];
  status = CheckFields(timelines, "timelines", {{"steps", Kind::kArray}});
  if (!status.ok()) return status;
  const nlohmann::json& steps = timelines["steps"];
  for (size_t i = 0; i < steps.size(); ++i) {
    status = CheckStep(steps[i], absl::StrCat("timelines.steps[", i, "]"));
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status ValidateRequestJson(const nlohmann::json& request) {
  absl::Status status = CheckFields(request, "request",
                                    {{"id", Kind::kInteger},
                                     {"arrival_s", Kind::kNumber},
                                     {"first_scheduled_s", Kind::kNumberOrNull},
                                     {"first_token_s", Kind::kNumberOrNull},
                                     {"finish_s", Kind::kNumberOrNull},
                                     {"ttft_ms", Kind::kNumberOrNull},
                                     {"tpot_ms", Kind::kNumberOrNull},
                                     {"e2el_ms", Kind::kNumberOrNull},
                                     {"input_tokens", Kind::kInteger},
                                     {"output_tokens", Kind::kInteger},
                                     {"preemptions", Kind::kInteger},
                                     {"prefix_hit_tokens", Kind::kInteger},
                                     {"completed", Kind::kBool},
                                     {"error", Kind::kString},
                                     {"output_ids", Kind::kArray},
                                     {"token_times_s", Kind::kArray},
                                     {"conversation_id", Kind::kInteger},
                                     {"turn", Kind::kInteger},
                                     {"quality_mean_kl", Kind::kNumberOrNull},
                                     {"quality_top1_agreement", Kind::kNumberOrNull}});
  if (!status.ok()) return status;
  status = CheckArrayOf(request["output_ids"], "request.output_ids",
                        &nlohmann::json::is_number_integer, "integer");
  if (!status.ok()) return status;
  return CheckArrayOf(request["token_times_s"], "request.token_times_s",
                      &nlohmann::json::is_number, "number");
}

}  // namespace kvscope::engine
