// `kvscope report DIR...`: a side-by-side table of finished bench runs.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "cli/flag_set.h"
#include "nlohmann/json.hpp"

namespace kvscope::cli {
namespace {

std::string Number(const nlohmann::json& v, const char* format, double scale = 1.0) {
  if (!v.is_number()) return "-";
  return absl::StrFormat(format, v.get<double>() * scale);
}

}  // namespace

int RunReport(const std::vector<std::string>& args) {
  FlagSet flags("kvscope report", "DIR [DIR ...]",
                "Prints the runs written by `kvscope bench --out DIR` side by side: strategy,\n"
                "throughput, latency, KV memory, preemptions and quality.");
  std::vector<std::string> dirs;
  if (std::optional<int> code = flags.ParseOrExitCode(args, &dirs)) return *code;
  if (dirs.empty()) {
    std::fprintf(stderr, "kvscope report: give one or more result directories\n");
    return 2;
  }
  std::printf("%-34s %-11s %5s %8s %9s %9s %9s %9s %10s %10s %6s %7s %8s %6s\n", "run", "strategy",
              "done", "req/s", "out tok/s", "TTFT ms", "p99 TTFT", "TPOT ms", "KV resv MiB",
              "KV used MiB", "waste", "preempt", "KL", "top-1");
  int failures = 0;
  for (const std::string& dir : dirs) {
    const std::string path = dir + "/result.json";
    std::ifstream in(path);
    if (!in) {
      std::fprintf(stderr, "kvscope report: cannot read %s\n", path.c_str());
      ++failures;
      continue;
    }
    std::stringstream text;
    text << in.rdbuf();
    const nlohmann::json doc = nlohmann::json::parse(text.str(), nullptr, false);
    if (doc.is_discarded() || !doc.contains("summary")) {
      std::fprintf(stderr, "kvscope report: %s is not a kvscope result file\n", path.c_str());
      ++failures;
      continue;
    }
    const nlohmann::json& s = doc["summary"];
    const nlohmann::json strategy = doc["config"].value("strategy", nlohmann::json("?"));
    std::string name = dir.size() > 34 ? "..." + dir.substr(dir.size() - 31) : dir;
    std::printf("%-34s %-11s %5s %8s %9s %9s %9s %9s %10s %10s %6s %7s %8s %6s%s\n", name.c_str(),
                strategy.is_string() ? strategy.get<std::string>().c_str() : "?",
                Number(s["completed"], "%.0f").c_str(), Number(s["request_throughput"], "%.2f").c_str(),
                Number(s["output_throughput"], "%.1f").c_str(), Number(s["mean_ttft_ms"], "%.1f").c_str(),
                Number(s["p99_ttft_ms"], "%.1f").c_str(), Number(s["mean_tpot_ms"], "%.2f").c_str(),
                Number(s["peak_kv_reserved_bytes"], "%.2f", 1.0 / 1048576).c_str(),
                Number(s["peak_kv_used_bytes"], "%.2f", 1.0 / 1048576).c_str(),
                Number(s["kv_waste_fraction"], "%.0f%%", 100).c_str(),
                Number(s["preemptions"], "%.0f").c_str(),
                Number(s.value("quality_mean_kl", nlohmann::json()), "%.4f").c_str(),
                Number(s.value("quality_top1_agreement", nlohmann::json()), "%.0f%%", 100).c_str(),
                doc.value("complete", true) ? "" : "  (incomplete)");
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace kvscope::cli
