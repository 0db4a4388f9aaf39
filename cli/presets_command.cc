#include <cstdio>

#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "cli/flag_set.h"
#include "engine/presets.h"

namespace kvscope::cli {

int RunPresets(const std::vector<std::string>& args) {
  FlagSet flags("kvscope presets", "",
                "Lists the synthetic model presets: real models' exact shapes with seeded\n"
                "random weights, selected with --model preset:NAME.");
  if (std::optional<int> code = flags.ParseOrExitCode(args, nullptr)) return *code;
  std::printf("%-16s %10s  %s\n", "NAME", "PARAMS", "DESCRIPTION");
  for (const engine::Preset& p : engine::AllPresets()) {
    std::printf("%-16s %9.3gB  %s\n", p.name.c_str(), p.config.NumParameters() / 1e9,
                p.description.c_str());
  }
  return 0;
}

}  // namespace kvscope::cli
