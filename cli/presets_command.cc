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
  if (absl::Status s = flags.Parse(args, nullptr); !s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.Help().c_str(), stdout);
    return 0;
  }
  std::printf("%-16s %10s  %s\n", "NAME", "PARAMS", "DESCRIPTION");
  for (const engine::Preset& p : engine::AllPresets()) {
    std::printf("%-16s %9.3gB  %s\n", p.name.c_str(), p.config.NumParameters() / 1e9,
                p.description.c_str());
  }
  return 0;
}

}  // namespace kvscope::cli
