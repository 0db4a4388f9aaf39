#include "common/units.h"

#include <cmath>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"

namespace kvscope {

absl::StatusOr<int64_t> ParseBytes(const std::string& text) {
  struct Suffix {
    const char* name;
    double factor;
  };
  static constexpr Suffix kSuffixes[] = {
      {"KiB", 1024.0},     {"MiB", 1048576.0}, {"GiB", 1073741824.0}, {"TiB", 1099511627776.0},
      {"KB", 1e3},         {"MB", 1e6},        {"GB", 1e9},           {"TB", 1e12},
      {"B", 1.0}};
  absl::string_view body = absl::StripAsciiWhitespace(text);
  double factor = 1.0;
  for (const Suffix& s : kSuffixes) {
    if (absl::ConsumeSuffix(&body, s.name)) {
      factor = s.factor;
      break;
    }
  }
  body = absl::StripAsciiWhitespace(body);
  double value;
  auto error = [&] {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", text, "' is not a byte size (write e.g. 64MiB, 1.5GiB, 512KiB, 100MB or 4096)"));
  };
  if (body.empty() || !absl::SimpleAtod(body, &value) || !std::isfinite(value) || value < 0) {
    return error();
  }
  const double bytes = value * factor;
  if (bytes >= 9.2e18) return error();
  return static_cast<int64_t>(std::llround(bytes));
}

std::string FormatBytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= 1073741824.0) return absl::StrFormat("%.2f GiB", b / 1073741824.0);
  if (b >= 1048576.0) return absl::StrFormat("%.1f MiB", b / 1048576.0);
  if (b >= 1024.0) return absl::StrFormat("%.1f KiB", b / 1024.0);
  return absl::StrCat(bytes, " B");
}

}  // namespace kvscope
