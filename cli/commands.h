// File: cli/commands.h
//
// The subcommands of the `kvscope` binary. Each takes the words after its name and returns
// the process exit code: 0 success, 1 runtime failure, 2 usage error. Messages go to stderr.
#ifndef KVSCOPE_CLI_COMMANDS_H_
#define KVSCOPE_CLI_COMMANDS_H_

#include <string>
#include <vector>

namespace kvscope::cli {

int RunGenerate(const std::vector<std::string>& args);
int RunPresets(const std::vector<std::string>& args);
int RunBench(const std::vector<std::string>& args);
int RunStrategies(const std::vector<std::string>& args);
int RunReport(const std::vector<std::string>& args);
// The cluster (docs/cluster.md): the coordinator daemon, its clients, and the embedded run.
int RunCoordinator(const std::vector<std::string>& args);
int RunSubmit(const std::vector<std::string>& args);
int RunStatus(const std::vector<std::string>& args);
int RunResults(const std::vector<std::string>& args);
int RunCancel(const std::vector<std::string>& args);
int RunWorkers(const std::vector<std::string>& args);
int RunRun(const std::vector<std::string>& args);
int RunWorker(const std::vector<std::string>& args);

}  // namespace kvscope::cli

#endif  // KVSCOPE_CLI_COMMANDS_H_
