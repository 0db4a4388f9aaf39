#include "cli/flag_set.h"

#include <cmath>
#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvscope::cli {

FlagSet::FlagSet(std::string command, std::string synopsis, std::string description)
    : command_(std::move(command)),
      synopsis_(std::move(synopsis)),
      description_(std::move(description)) {}

void FlagSet::String(const std::string& name, std::string* value, const std::string& help) {
  flags_[name] = {help, "string", *value, [value](const std::string& v) {
                    *value = v;
                    return absl::OkStatus();
                  }};
  order_.push_back(name);
}

void FlagSet::Int(const std::string& name, int64_t* value, const std::string& help) {
  flags_[name] = {help, "int", absl::StrCat(*value), [value, name](const std::string& v) {
                    if (!absl::SimpleAtoi(v, value)) {
                      return absl::InvalidArgumentError(
                          absl::StrCat("--", name, " expects an integer, got '", v, "'"));
                    }
                    return absl::OkStatus();
                  }};
  order_.push_back(name);
}

void FlagSet::Double(const std::string& name, double* value, const std::string& help) {
  flags_[name] = {help, "number", absl::StrFormat("%g", *value),
                  [value, name](const std::string& v) {
                    if (!absl::SimpleAtod(v, value) || !std::isfinite(*value)) {
                      return absl::InvalidArgumentError(
                          absl::StrCat("--", name, " expects a number, got '", v, "'"));
                    }
                    return absl::OkStatus();
                  }};
  order_.push_back(name);
}

void FlagSet::Bool(const std::string& name, bool* value, const std::string& help) {
  flags_[name] = {help, "bool", *value ? "true" : "false", [value, name](const std::string& v) {
                    if (!absl::SimpleAtob(v, value)) {
                      return absl::InvalidArgumentError(
                          absl::StrCat("--", name, " expects true or false, got '", v, "'"));
                    }
                    return absl::OkStatus();
                  }};
  order_.push_back(name);
}

void FlagSet::StringList(const std::string& name, std::vector<std::string>* values,
                         const std::string& help) {
  flags_[name] = {help, "list", "", [values](const std::string& v) {
                    values->push_back(v);
                    return absl::OkStatus();
                  }};
  order_.push_back(name);
}

absl::Status FlagSet::Error(const std::string& message) const {
  return absl::InvalidArgumentError(
      absl::StrCat(command_, ": ", message, " (see '", command_, " --help')"));
}

std::optional<int> FlagSet::ParseOrExitCode(const std::vector<std::string>& args,
                                            std::vector<std::string>* positional) {
  if (absl::Status s = Parse(args, positional); !s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (help_requested_) {
    std::fputs(Help().c_str(), stdout);
    return 0;
  }
  return std::nullopt;
}

absl::Status FlagSet::Parse(const std::vector<std::string>& args,
                            std::vector<std::string>* positional) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      help_requested_ = true;
      continue;
    }
    if (arg.size() < 3 || arg.rfind("--", 0) != 0) {
      if (positional == nullptr) return Error(absl::StrCat("unexpected argument '", arg, "'"));
      positional->push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    auto it = flags_.find(name);
    if (it == flags_.end() && name.rfind("no-", 0) == 0 && !has_value) {
      auto negated = flags_.find(name.substr(3));
      if (negated != flags_.end() && negated->second.kind == "bool") {
        set_[negated->first] = true;
        (void)negated->second.set("false");
        continue;
      }
    }
    if (it == flags_.end()) return Error(absl::StrCat("unknown flag --", name));
    if (!has_value) {
      if (it->second.kind == "bool") {
        value = "true";
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return Error(absl::StrCat("--", name, " needs a value"));
      }
    }
    absl::Status status = it->second.set(value);
    if (!status.ok()) return Error(std::string(status.message()));
    set_[name] = true;
  }
  return absl::OkStatus();
}

bool FlagSet::IsSet(const std::string& name) const { return set_.count(name) > 0; }

std::string FlagSet::Help() const {
  std::string out = absl::StrCat("usage: ", command_, " ", synopsis_, "\n\n", description_,
                                 "\n\nflags:\n");
  for (const std::string& name : order_) {
    const Flag& f = flags_.at(name);
    std::string left = absl::StrCat("  --", name);
    if (f.kind != "bool") absl::StrAppend(&left, " ", f.kind == "list" ? "VALUE" : "VALUE");
    std::string right = f.help;
    if (!f.default_text.empty() && f.kind != "list") {
      absl::StrAppend(&right, " (default: ", f.default_text, ")");
    }
    if (f.kind == "list") absl::StrAppend(&right, " (repeatable)");
    absl::StrAppend(&out, absl::StrFormat("%-26s %s\n", left, right));
  }
  absl::StrAppend(&out, absl::StrFormat("%-26s %s\n", "  --help", "print this help"));
  return out;
}

}  // namespace kvscope::cli
