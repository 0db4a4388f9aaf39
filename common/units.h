// File: common/units.h
//
// Human-friendly quantities on the command line and in YAML: byte sizes with binary or
// decimal suffixes ("64MiB", "1.5GiB", "512KiB", "100MB", "4096") and their display.
#ifndef KVSCOPE_COMMON_UNITS_H_
#define KVSCOPE_COMMON_UNITS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace kvscope {

// Accepts a non-negative number (integer or decimal) with an optional suffix: B, KiB, MiB,
// GiB, TiB (powers of 1024), KB, MB, GB, TB (powers of 1000), case-sensitive as written,
// spaces allowed before the suffix. InvalidArgument (quoting the text and listing the
// suffixes) otherwise, and for values that overflow int64.
absl::StatusOr<int64_t> ParseBytes(const std::string& text);

// "64.0 MiB", "1.50 GiB", "512 B".
std::string FormatBytes(int64_t bytes);

}  // namespace kvscope

#endif  // KVSCOPE_COMMON_UNITS_H_
