// Comparison tables over an experiment's trials (coordinator/aggregate.h).
#include "coordinator/aggregate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace kvscope::coordinator {
namespace {

// The pseudo-axis "repeat" groups by ResultRow::repeat.
constexpr char kRepeat[] = "repeat";

// Student's t quantile t(0.975, dof): exact to 9 digits for dof <= 30 (table), the
// Cornish-Fisher expansion beyond (Abramowitz & Stegun 26.7.5; error < 1e-6 for dof > 30).
double StudentT975(int64_t dof) {
  static const double kTable[] = {12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836,
                                  2.446911851,  2.364624252, 2.306004135, 2.262157163, 2.228138852,
                                  2.200985160,  2.178812830, 2.160368656, 2.144786688, 2.131449546,
                                  2.119905299,  2.109815578, 2.100922040, 2.093024054, 2.085963447,
                                  2.079613845,  2.073873068, 2.068657610, 2.063898562, 2.059538553,
                                  2.055529439,  2.051830516, 2.048407142, 2.045229642, 2.042272456};
  if (dof >= 1 && dof <= 30) return kTable[dof - 1];
  const double z = 1.959963984540054;
  const double n = static_cast<double>(dof);
  const double z2 = z * z, z3 = z2 * z, z5 = z3 * z2, z7 = z5 * z2, z9 = z7 * z2;
  return z + (z3 + z) / (4 * n) + (5 * z5 + 16 * z3 + 3 * z) / (96 * n * n) +
         (3 * z7 + 19 * z5 + 17 * z3 - 15 * z) / (384 * n * n * n) +
         (79 * z9 + 776 * z7 + 1482 * z5 - 1920 * z3 - 945 * z) / (92160 * n * n * n * n);
}

// summary["a"]["b"] for "a.b"; null when absent.
const nlohmann::json* Lookup(const nlohmann::json& summary, const std::string& key) {
  const nlohmann::json* node = &summary;
  for (absl::string_view part : absl::StrSplit(key, '.')) {
    if (!node->is_object()) return nullptr;
    auto it = node->find(std::string(part));
    if (it == node->end()) return nullptr;
    node = &*it;
  }
  return node;
}

MeanCi Stats(const std::vector<double>& xs) {
  MeanCi s;
  s.n = static_cast<int64_t>(xs.size());
  if (xs.empty()) return s;
  double sum = 0;
  for (double x : xs) sum += x;
  s.mean = sum / static_cast<double>(s.n);
  if (s.n >= 2) {
    double ss = 0;
    for (double x : xs) ss += (x - s.mean) * (x - s.mean);
    const double sd = std::sqrt(ss / static_cast<double>(s.n - 1));
    s.ci95 = StudentT975(s.n - 1) * sd / std::sqrt(static_cast<double>(s.n));
  }
  return s;
}

// An axis value as a table cell: strings bare, "h2o(kv_budget=0.2)" for strategy maps.
std::string CellOf(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "-";
  if (v.is_object()) {
    std::string name;
    std::vector<std::string> rest;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (it.key() == "name" && it->is_string()) {
        name = it->get<std::string>();
      } else {
        rest.push_back(absl::StrCat(it.key(), v.size() == 1 ? ":" : "=", CellOf(*it)));
      }
    }
    if (!name.empty()) {
      return rest.empty() ? name : absl::StrCat(name, "(", absl::StrJoin(rest, ","), ")");
    }
    return rest.size() == 1 ? rest[0] : absl::StrCat("(", absl::StrJoin(rest, ","), ")");
  }
  return v.dump();
}

// About 4 significant digits; `decimals` (when >= 0) forces the decimals.
std::string Number(double x, int* decimals_out = nullptr, int decimals = -1) {
  if (!std::isfinite(x)) return x > 0 ? "inf" : x < 0 ? "-inf" : "nan";
  const double a = std::fabs(x);
  char buf[64];
  if (decimals < 0 && a != 0 && (a >= 1e7 || a < 1e-3)) {
    std::snprintf(buf, sizeof(buf), "%.3e", x);
    if (decimals_out != nullptr) *decimals_out = -1;
    return buf;
  }
  if (decimals < 0) {
    decimals = a == 0 ? 0 : std::max(0, 3 - static_cast<int>(std::floor(std::log10(a))));
  }
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, x);
  if (decimals_out != nullptr) *decimals_out = decimals;
  return buf;
}

std::string FullNumber(double x) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.10g", x);
  return buf;
}

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

}  // namespace

const std::vector<std::string>& DefaultMetrics() {
  static const std::vector<std::string> metrics = {
      "request_throughput", "output_throughput", "mean_ttft_ms",
      "p99_ttft_ms",        "mean_tpot_ms",      "peak_kv_used_bytes",
      "preemptions",        "quality_mean_kl",   "quality_top1_agreement",
      "h2d_bytes_per_token"};
  return metrics;
}

absl::StatusOr<std::vector<AggregateRow>> Aggregate(const std::vector<ResultRow>& rows,
                                                    const std::vector<std::string>& group_by,
                                                    const std::vector<std::string>& metrics) {
  // Known axes, in first-seen order.
  std::vector<std::string> known;
  for (const ResultRow& row : rows) {
    if (!row.axes.is_object()) continue;
    for (auto it = row.axes.begin(); it != row.axes.end(); ++it) {
      if (std::find(known.begin(), known.end(), it.key()) == known.end()) known.push_back(it.key());
    }
  }
  std::vector<std::string> keys = group_by.empty() ? known : group_by;
  if (!rows.empty()) {
    for (const std::string& axis : group_by) {
      if (axis != kRepeat && std::find(known.begin(), known.end(), axis) == known.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "unknown axis '", axis, "' to group by; known: ", absl::StrJoin(known, ", "),
            known.empty() ? "repeat" : ", repeat"));
      }
    }
  }
  const std::vector<std::string>& names = metrics.empty() ? DefaultMetrics() : metrics;

  std::vector<AggregateRow> out;
  std::vector<std::string> group_ids;  // group JSON dumps, parallel to `out`
  std::vector<std::map<std::string, std::vector<double>>> values;
  for (const ResultRow& row : rows) {
    nlohmann::json group = nlohmann::json::object();
    for (const std::string& axis : keys) {
      if (axis == kRepeat) {
        group[axis] = row.repeat;
      } else if (row.axes.is_object() && row.axes.contains(axis)) {
        group[axis] = row.axes[axis];
      } else {
        group[axis] = nullptr;
      }
    }
    const std::string id = group.dump();
    size_t g = std::find(group_ids.begin(), group_ids.end(), id) - group_ids.begin();
    if (g == group_ids.size()) {
      group_ids.push_back(id);
      AggregateRow agg;
      agg.group = std::move(group);
      out.push_back(std::move(agg));
      values.emplace_back();
    }
    AggregateRow& agg = out[g];
    ++agg.trials;
    if (row.state != "succeeded") continue;
    ++agg.succeeded;
    for (const std::string& m : names) {
      std::vector<double>& xs = values[g][m];
      const nlohmann::json* v = row.summary.is_object() ? Lookup(row.summary, m) : nullptr;
      if (v != nullptr && v->is_number()) {
        const double x = v->get<double>();
        if (std::isfinite(x)) xs.push_back(x);
      }
    }
  }
  for (size_t g = 0; g < out.size(); ++g) {
    for (const std::string& m : names) out[g].metrics[m] = Stats(values[g][m]);
  }
  return out;
}

std::string FormatAggregateTable(const std::vector<AggregateRow>& rows,
                                 const std::vector<std::string>& group_by,
                                 const std::vector<std::string>& metrics) {
  std::vector<std::string> keys = group_by;
  if (keys.empty() && !rows.empty()) {
    for (auto it = rows[0].group.begin(); it != rows[0].group.end(); ++it) keys.push_back(it.key());
  }
  const std::vector<std::string>& names = metrics.empty() ? DefaultMetrics() : metrics;
  std::vector<std::vector<std::string>> cells;
  std::vector<std::string> header = keys;
  header.push_back("ok/trials");
  for (const std::string& m : names) header.push_back(m);
  cells.push_back(header);
  for (const AggregateRow& row : rows) {
    std::vector<std::string> line;
    for (const std::string& k : keys) {
      line.push_back(row.group.contains(k) ? CellOf(row.group[k]) : "-");
    }
    line.push_back(absl::StrCat(row.succeeded, "/", row.trials));
    for (const std::string& m : names) {
      auto it = row.metrics.find(m);
      if (it == row.metrics.end() || it->second.n == 0) {
        line.push_back("-");
        continue;
      }
      int decimals = -1;
      std::string cell = Number(it->second.mean, &decimals);
      if (it->second.ci95) {
        absl::StrAppend(
            &cell, " ± ",
            decimals >= 0 ? Number(*it->second.ci95, nullptr, decimals) : Number(*it->second.ci95));
      }
      line.push_back(cell);
    }
    cells.push_back(std::move(line));
  }
  // Column widths in characters ("±" is one character, two bytes).
  auto width = [](const std::string& s) {
    size_t w = 0;
    for (char c : s) w += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    return w;
  };
  std::vector<size_t> widths(header.size(), 0);
  for (const auto& line : cells) {
    for (size_t c = 0; c < line.size(); ++c) widths[c] = std::max(widths[c], width(line[c]));
  }
  std::string out;
  for (size_t r = 0; r < cells.size(); ++r) {
    std::string line;
    for (size_t c = 0; c < cells[r].size(); ++c) {
      const std::string& cell = cells[r][c];
      const std::string pad(widths[c] - width(cell), ' ');
      if (c > 0) line += "  ";
      // Axis columns left-aligned, numbers right-aligned.
      line += c < keys.size() ? cell + pad : pad + cell;
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

std::string FormatAggregateCsv(const std::vector<AggregateRow>& rows,
                               const std::vector<std::string>& group_by,
                               const std::vector<std::string>& metrics) {
  std::vector<std::string> keys = group_by;
  if (keys.empty() && !rows.empty()) {
    for (auto it = rows[0].group.begin(); it != rows[0].group.end(); ++it) keys.push_back(it.key());
  }
  const std::vector<std::string>& names = metrics.empty() ? DefaultMetrics() : metrics;
  std::vector<std::string> header;
  for (const std::string& k : keys) header.push_back(CsvField(k));
  header.push_back("trials");
  header.push_back("succeeded");
  for (const std::string& m : names) {
    header.push_back(CsvField(absl::StrCat(m, "_mean")));
    header.push_back(CsvField(absl::StrCat(m, "_ci95")));
  }
  std::string out = absl::StrCat(absl::StrJoin(header, ","), "\n");
  for (const AggregateRow& row : rows) {
    std::vector<std::string> line;
    for (const std::string& k : keys) {
      line.push_back(CsvField(row.group.contains(k) ? CellOf(row.group[k]) : ""));
    }
    line.push_back(absl::StrCat(row.trials));
    line.push_back(absl::StrCat(row.succeeded));
    for (const std::string& m : names) {
      auto it = row.metrics.find(m);
      const bool has = it != row.metrics.end() && it->second.n > 0;
      line.push_back(has ? FullNumber(it->second.mean) : "");
      line.push_back(has && it->second.ci95 ? FullNumber(*it->second.ci95) : "");
    }
    absl::StrAppend(&out, absl::StrJoin(line, ","), "\n");
  }
  return out;
}

nlohmann::json AggregateToJson(const std::vector<AggregateRow>& rows) {
  nlohmann::json out = nlohmann::json::array();
  for (const AggregateRow& row : rows) {
    nlohmann::json metrics = nlohmann::json::object();
    for (const auto& [name, s] : row.metrics) {
      metrics[name] = {{"n", s.n},
                       {"mean", s.n > 0 ? nlohmann::json(s.mean) : nlohmann::json(nullptr)},
                       {"ci95", s.ci95 ? nlohmann::json(*s.ci95) : nlohmann::json(nullptr)}};
    }
    out.push_back({{"group", row.group},
                   {"trials", row.trials},
                   {"succeeded", row.succeeded},
                   {"metrics", std::move(metrics)}});
  }
  return out;
}

// Exposed for tests through aggregate.h.
double StudentT975Quantile(int64_t dof) { return StudentT975(dof); }

}  // namespace kvscope::coordinator
