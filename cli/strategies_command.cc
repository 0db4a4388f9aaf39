#include <cstdio>

#include "cli/commands.h"
#include "cli/flag_set.h"
#include "kvcache/registry.h"

namespace kvscope::cli {

int RunStrategies(const std::vector<std::string>& args) {
  FlagSet flags("kvscope strategies", "",
                "Lists the KV-cache strategies (--strategy NAME) and their parameters\n"
                "(--strategy-param KEY=VALUE).");
  if (std::optional<int> code = flags.ParseOrExitCode(args, nullptr)) return *code;
  for (const kvcache::StrategyInfo& s : kvcache::RegisteredStrategies()) {
    std::printf("%s: %s\n", s.name.c_str(), s.description.c_str());
    for (const kvcache::ParamSpec& p : s.params) {
      std::printf("  %-24s %s (default: %s)\n", p.name.c_str(), p.help.c_str(),
                  p.default_value.c_str());
    }
  }
  return 0;
}

}  // namespace kvscope::cli
