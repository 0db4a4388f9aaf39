// The single kvscope binary: `kvscope SUBCOMMAND [flags]`.
#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "common/build_info.h"

namespace {

constexpr char kUsage[] =
    "kvscope: measure how KV-cache strategies for LLM inference trade latency, throughput,\n"
    "memory and answer quality.\n\n"
    "usage: kvscope SUBCOMMAND [flags]   (kvscope SUBCOMMAND --help for its flags)\n\n"
    "subcommands:\n"
    "  generate   run a model on a prompt and print the continuation and tokens/s\n"
    "  bench      serve a generated request load under one KV strategy and measure it\n"
    "  strategies list the KV-cache strategies and their parameters\n"
    "  report     print finished bench runs side by side\n"
    "  presets    list the synthetic model presets (--model preset:NAME)\n"
    "  version    print the version and build facts\n"
    "\ncluster (docs/cluster.md):\n"
    "  run         run a sweep file on this machine and print the comparison\n"
    "  coordinator serve sweeps to workers and clients over gRPC (--listen, --db)\n"
    "  submit      submit a sweep file to a coordinator (--wait: follow it)\n"
    "  status      list experiments, or one experiment's trials\n"
    "  results     an experiment's results: table, csv or json\n"
    "  cancel      cancel an experiment's unfinished trials\n"
    "  workers     list the workers registered with a coordinator\n"
    "  worker      run a worker daemon that takes trials from a coordinator\n";

int RunVersion() {
  const kvscope::BuildInfo& info = kvscope::GetBuildInfo();
  std::printf("kvscope %s (commit %s, %s build, cuda %s, nccl %s%s)\n", info.version.c_str(),
              info.git_commit.c_str(), info.build_type.c_str(), info.with_cuda ? "on" : "off",
              info.with_nccl ? "on" : "off", info.sanitizers ? ", sanitizers" : "");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "--help" || command == "-h" || command == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (command == "--version" || command == "version") return RunVersion();
  if (command == "generate") return kvscope::cli::RunGenerate(args);
  if (command == "presets") return kvscope::cli::RunPresets(args);
  if (command == "bench") return kvscope::cli::RunBench(args);
  if (command == "strategies") return kvscope::cli::RunStrategies(args);
  if (command == "report") return kvscope::cli::RunReport(args);
  if (command == "coordinator") return kvscope::cli::RunCoordinator(args);
  if (command == "submit") return kvscope::cli::RunSubmit(args);
  if (command == "status") return kvscope::cli::RunStatus(args);
  if (command == "results") return kvscope::cli::RunResults(args);
  if (command == "cancel") return kvscope::cli::RunCancel(args);
  if (command == "workers") return kvscope::cli::RunWorkers(args);
  if (command == "run") return kvscope::cli::RunRun(args);
  if (command == "worker") return kvscope::cli::RunWorker(args);
  std::fprintf(stderr, "kvscope: unknown subcommand '%s'\n\n%s", command.c_str(), kUsage);
  return 2;
}
