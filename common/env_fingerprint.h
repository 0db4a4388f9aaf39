// File: common/env_fingerprint.h
//
// Where and with what a run was made: build facts, host, OS, CPU, memory, compiler, GPUs.
// Written as result.json's "environment" (docs/result-schema.md), so that two results can be
// compared knowing whether they came from the same build and machine. Also a fast content
// hash for model files, so a result names the exact weights it ran.
//
// Thread-safe: every function only reads the system and returns values.
#ifndef KVSCOPE_COMMON_ENV_FINGERPRINT_H_
#define KVSCOPE_COMMON_ENV_FINGERPRINT_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace kvscope {

// The environment of a run started at `unix_seconds` (seconds since the Unix epoch, UTC; the
// caller reads the wall clock, so tests are deterministic). An object with the keys
//   kvscope_version, git_commit, build_type, with_cuda, with_nccl, sanitizers  (GetBuildInfo())
//   time_utc      ISO 8601, e.g. "2024-05-01T12:00:00Z"
//   hostname, os {sysname, release, machine}  (uname(2))
//   cpu_model     /proc/cpuinfo "model name" ("" when absent, e.g. on some ARM kernels)
//   cpu_cores     std::thread::hardware_concurrency() (0 when unknown)
//   memory_bytes  /proc/meminfo MemTotal in bytes (0 when unreadable)
//   compiler      e.g. "GCC 12.2.0"
//   gpus          [] on CPU builds. TODO(cuda): one object per visible device with name,
//                 memory_bytes, compute_capability, driver and runtime versions.
// Never fails: a fact that cannot be read gets its "unknown" value ("" or 0).
nlohmann::json EnvironmentFingerprint(int64_t unix_seconds);

// Seconds since the Unix epoch now (system clock), for EnvironmentFingerprint.
int64_t UnixSecondsNow();

// `unix_seconds` as ISO 8601 UTC with a Z suffix: 0 -> "1970-01-01T00:00:00Z".
std::string FormatUtcIso8601(int64_t unix_seconds);

// The "model name" value of the first processor in /proc/cpuinfo text; "" if none.
std::string ParseCpuModel(absl::string_view cpuinfo);
// MemTotal from /proc/meminfo text, in bytes (the file states kB); 0 if absent.
int64_t ParseMemTotalBytes(absl::string_view meminfo);

// Name of the FileHash algorithm, for writing beside a hash.
inline constexpr char kFileHashAlgorithm[] = "xxh64";

// XXH64 (seed 0) of `size` bytes; equal to the reference xxHash implementation.
uint64_t Xxh64(const void* data, size_t size, uint64_t seed = 0);

// Content hash of the file at `path`: XXH64 with seed 0, as 16 lowercase hex digits (the
// same as `xxhsum -H64 path`). Several GB/s, so it can fingerprint model weights on every
// run. NotFound / InvalidArgument (a directory) / Internal with the path in the message.
absl::StatusOr<std::string> FileHash(const std::string& path);

}  // namespace kvscope

#endif  // KVSCOPE_COMMON_ENV_FINGERPRINT_H_
