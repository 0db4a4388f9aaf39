// Parameter parsing and validation for registry.h; the strategies themselves are listed in
// registry_table.cc.
#include "kvcache/registry.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/units.h"

namespace kvscope::kvcache {
namespace {

const char* TypeName(ParamType type) {
  switch (type) {
    case ParamType::kInt:
      return "int";
    case ParamType::kDouble:
      return "double";
    case ParamType::kBool:
      return "bool";
    case ParamType::kBytes:
      return "bytes";
    case ParamType::kChoice:
      return "choice";
  }
  return "?";
}

bool ParseBool(const std::string& text, bool* out) {
  const std::string t = absl::AsciiStrToLower(text);
  if (t == "true" || t == "1" || t == "yes" || t == "on") {
    *out = true;
    return true;
  }
  if (t == "false" || t == "0" || t == "no" || t == "off") {
    *out = false;
    return true;
  }
  return false;
}

bool HasMin(const ParamSpec& spec) { return spec.min > -1e299; }
bool HasMax(const ParamSpec& spec) { return spec.max < 1e299; }

std::string Bound(const ParamSpec& spec, double value) {
  if (spec.type == ParamType::kDouble) return absl::StrCat(value);
  return absl::StrCat(static_cast<int64_t>(value));
}

// "block_size (int, default 16, in [1, 1024]): tokens per block"
std::string Describe(const ParamSpec& spec) {
  std::string out = absl::StrCat(spec.name, " (", TypeName(spec.type));
  if (spec.type == ParamType::kChoice) {
    absl::StrAppend(&out, " ", absl::StrJoin(spec.choices, "|"));
  }
  absl::StrAppend(&out, ", default ", spec.default_value);
  if (HasMin(spec) || HasMax(spec)) {
    absl::StrAppend(&out, ", in [", HasMin(spec) ? Bound(spec, spec.min) : "-inf", ", ",
                    HasMax(spec) ? Bound(spec, spec.max) : "inf", "]");
  }
  absl::StrAppend(&out, ")");
  if (!spec.help.empty()) absl::StrAppend(&out, ": ", spec.help);
  return out;
}

const StrategyInfo* FindStrategy(const std::string& name) {
  for (const StrategyInfo& info : RegisteredStrategies()) {
    if (info.name == name) return &info;
  }
  return nullptr;
}

std::string KnownStrategies() {
  std::vector<std::string> names;
  for (const StrategyInfo& info : RegisteredStrategies()) names.push_back(info.name);
  return absl::StrJoin(names, ", ");
}

// Checks one value against its spec.
absl::Status ValidateValue(const std::string& strategy, const ParamSpec& spec,
                           const std::string& text) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("strategy ", strategy, ": ", spec.name, "=",
                                                   text, " ", why, "; ", Describe(spec)));
  };
  double value = 0;
  switch (spec.type) {
    case ParamType::kInt: {
      int64_t v;
      if (!absl::SimpleAtoi(text, &v)) return bad("is not an integer");
      value = static_cast<double>(v);
      break;
    }
    case ParamType::kDouble:
      if (!absl::SimpleAtod(text, &value) || !std::isfinite(value)) return bad("is not a number");
      break;
    case ParamType::kBool: {
      bool b;
      if (!ParseBool(text, &b)) return bad("is not a bool (true/false, 1/0, yes/no, on/off)");
      return absl::OkStatus();
    }
    case ParamType::kBytes: {
      absl::StatusOr<int64_t> bytes = ParseBytes(text);
      if (!bytes.ok())
        return bad(absl::StrCat("is not a byte size (", bytes.status().message(), ")"));
      value = static_cast<double>(*bytes);
      break;
    }
    case ParamType::kChoice:
      for (const std::string& choice : spec.choices) {
        if (choice == text) return absl::OkStatus();
      }
      return bad(absl::StrCat("is not one of ", absl::StrJoin(spec.choices, ", ")));
  }
  if (value < spec.min || value > spec.max) return bad("is out of range");
  return absl::OkStatus();
}

[[noreturn]] void UnknownParam(const std::string& name) {
  // A strategy reading a parameter it does not declare: an internal bug.
  std::fprintf(stderr, "StrategyParams: no parameter '%s'\n", name.c_str());
  std::abort();
}

}  // namespace

absl::StatusOr<StrategyParams> ParseStrategyParams(const std::string& strategy,
                                                   const std::map<std::string, std::string>& raw) {
  const StrategyInfo* info = FindStrategy(strategy);
  if (info == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unknown KV strategy '", strategy,
                                                   "'; known strategies: ", KnownStrategies()));
  }
  for (const auto& [name, text] : raw) {
    bool known = false;
    for (const ParamSpec& spec : info->params) known = known || spec.name == name;
    if (!known) {
      std::vector<std::string> params;
      for (const ParamSpec& spec : info->params) params.push_back(Describe(spec));
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown parameter '", name, "' for strategy ", strategy, "; its parameters: ",
          params.empty() ? std::string("none") : absl::StrJoin(params, "; ")));
    }
  }
  StrategyParams params;
  for (const ParamSpec& spec : info->params) {
    auto it = raw.find(spec.name);
    const bool given = it != raw.end();
    const std::string& text = given ? it->second : spec.default_value;
    KVSCOPE_RETURN_IF_ERROR(ValidateValue(strategy, spec, text));
    params.values_[spec.name] = text;
    params.set_[spec.name] = given;
  }
  return params;
}

int64_t StrategyParams::Int(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) UnknownParam(name);
  int64_t value;
  if (absl::SimpleAtoi(it->second, &value)) return value;
  absl::StatusOr<int64_t> bytes = ParseBytes(it->second);
  if (!bytes.ok()) UnknownParam(name);
  return *bytes;
}

double StrategyParams::Double(const std::string& name) const {
  auto it = values_.find(name);
  double value;
  if (it == values_.end() || !absl::SimpleAtod(it->second, &value)) UnknownParam(name);
  return value;
}

bool StrategyParams::Bool(const std::string& name) const {
  auto it = values_.find(name);
  bool value;
  if (it == values_.end() || !ParseBool(it->second, &value)) UnknownParam(name);
  return value;
}

const std::string& StrategyParams::Choice(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) UnknownParam(name);
  return it->second;
}

bool StrategyParams::IsSet(const std::string& name) const {
  auto it = set_.find(name);
  return it != set_.end() && it->second;
}

absl::StatusOr<std::unique_ptr<KvManager>> CreateKvManager(
    const std::string& strategy, const std::map<std::string, std::string>& raw,
    const KvManagerContext& context) {
  KVSCOPE_ASSIGN_OR_RETURN(StrategyParams params, ParseStrategyParams(strategy, raw));
  return FindStrategy(strategy)->create(params, context);
}

}  // namespace kvscope::kvcache
