// File: cli/flag_set.h
//
// Flags of one subcommand: `--name value`, `--name=value`, booleans as `--name`,
// `--name=false` or `--no-name`; repeated flags for lists. Each subcommand has its own set,
// so `kvscope SUB --help` lists exactly its flags. Used only by the cli/ entry points.
#ifndef KVSCOPE_CLI_FLAG_SET_H_
#define KVSCOPE_CLI_FLAG_SET_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace kvscope::cli {

class FlagSet {
 public:
  // `command`: e.g. "kvscope generate"; `synopsis`: the usage line after the command;
  // `description`: a paragraph for --help.
  FlagSet(std::string command, std::string synopsis, std::string description);

  void String(const std::string& name, std::string* value, const std::string& help);
  void Int(const std::string& name, int64_t* value, const std::string& help);
  void Double(const std::string& name, double* value, const std::string& help);
  void Bool(const std::string& name, bool* value, const std::string& help);
  void StringList(const std::string& name, std::vector<std::string>* values,
                  const std::string& help);

  // Parses args (the words after the subcommand). Positional words go to `positional`
  // (an error if null). InvalidArgument names the flag and says how to get help.
  absl::Status Parse(const std::vector<std::string>& args, std::vector<std::string>* positional);

  // Parse() as a subcommand's entry point uses it: on a bad flag prints the message to
  // stderr and returns 2; on --help prints Help() to stdout and returns 0; otherwise
  // nullopt, and the command goes on.
  std::optional<int> ParseOrExitCode(const std::vector<std::string>& args,
                                     std::vector<std::string>* positional);

  bool help_requested() const { return help_requested_; }
  bool IsSet(const std::string& name) const;
  std::string Help() const;
  const std::string& command() const { return command_; }

 private:
  struct Flag {
    std::string help;
    std::string kind;  // "string", "int", "number", "bool", "list"
    std::string default_text;
    std::function<absl::Status(const std::string&)> set;
  };
  absl::Status Error(const std::string& message) const;

  std::string command_, synopsis_, description_;
  std::map<std::string, Flag> flags_;
  std::vector<std::string> order_;
  std::map<std::string, bool> set_;
  bool help_requested_ = false;
};

}  // namespace kvscope::cli

#endif  // KVSCOPE_CLI_FLAG_SET_H_
