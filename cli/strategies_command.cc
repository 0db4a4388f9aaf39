#include <cstdio>

#include "cli/commands.h"
#include "cli/flag_set.h"
#include "kvcache/registry.h"

namespace kvscope::cli {

int RunStrategies(const std::vector<std::string>& args) {
  FlagSet flags("kvscope strategies", "",
                "Lists the KV-cache strategies (--strategy NAME) and their parameters\n"
                "(--strategy-param KEY=VALUE).");
  if (absl::Status s = flags.Parse(args, nullptr); !s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.Help().c_str(), stdout);
    return 0;
  }
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
