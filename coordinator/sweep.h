// File: coordinator/sweep.h
//
// Sweep files (docs/sweeps.md): a base trial (the keys of a `kvscope bench` YAML file,
// docs/bench.md, without `out`) plus a matrix whose Cartesian product gives the trials,
// `link` groups of axes that vary together, `repeats` and a `seed`:
//
//   name: quickstart
//   model: {preset: llama-tiny}
//   memory: {kv_bytes: 64MiB}
//   workload: {num_requests: 200, arrival: poisson, input_len: {dist: lognormal, mean: 256},
//              output_len: 64}
//   matrix:
//     strategy: [{name: paged}, {name: h2o, kv_budget: 0.2}]
//     request_rate: [2, 8, 32]
//     tp: [1]
//   repeats: 3
//   seed: 7
//
// Parsing is pure (text in, trials out) and validates every trial with the bench config
// parser and the strategy registry before anything is stored. Every error names the file,
// line, key, what was found and what is allowed.
#ifndef KVSCOPE_COORDINATOR_SWEEP_H_
#define KVSCOPE_COORDINATOR_SWEEP_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace kvscope::coordinator {

// Limits that keep a hostile or mistaken file from exhausting the coordinator.
struct SweepLimits {
  int64_t max_trials = 100000;         // trials after expansion, repeats included
  int64_t max_text_bytes = 1 << 20;    // the YAML text
  int64_t max_string_bytes = 4096;     // any single string value or key
  int32_t max_axes = 16;
  int32_t max_values_per_axis = 1000;
  int64_t max_total_config_bytes = 256LL << 20;  // config_yaml over all trials
};

// What a trial needs from a worker (placement).
struct TrialRequirements {
  // GPUs per worker process for backend "cuda" (tp / nodes; = tp for a one-process trial);
  // 0 for "cpu".
  int32_t gpus = 0;
  int32_t cpu_threads = 0;        // 0 = any
  std::string backend = "cpu";    // "cpu" or "cuda"
  int64_t gpu_memory_bytes = 0;   // per GPU; 0 = no requirement
  std::string model_path;         // a model directory the worker must have; "" for presets
  // Worker processes the trial spans (bench key `nodes`): > 1 makes it a gang, placed on
  // `nodes` distinct workers that each meet the requirements above (docs/cluster.md).
  int32_t nodes = 1;
};

struct TrialSpec {
  int64_t index = 0;     // 0-based position in expansion order
  int32_t repeat = 0;    // 0 .. repeats-1
  uint64_t seed = 0;     // the trial seed written into config_yaml
  // Axis name -> value (JSON scalar or object); "repeat" is not an axis. nlohmann::json
  // keeps keys sorted: Sweep::axis_names has the matrix order. Plain YAML scalars become
  // integers, numbers or booleans when they read as such, anything else (64MiB, inf,
  // quoted text) a string.
  nlohmann::json axes = nlohmann::json::object();
  // Short human label, e.g. "strategy=h2o(kv_budget=0.2) request_rate=8 tp=1 repeat=0".
  std::string label;
  // A complete `kvscope bench` YAML document for this trial (no `out` key): the worker
  // runs `kvscope bench --config FILE --out DIR`.
  std::string config_yaml;
  TrialRequirements requirements;
};

struct Sweep {
  std::string name;
  int32_t repeats = 1;
  uint64_t seed = 0;
  int32_t max_attempts = 3;           // optional key `max_attempts`
  std::vector<std::string> axis_names;  // matrix order
  std::vector<TrialSpec> trials;
};

// Parses and validates a sweep. `source` (a file name) prefixes every error:
// "FILE:LINE:COLUMN: message", the line and column of the offending value (or key).
//
// Expansion order (TrialSpec::index): repeats outermost, then the matrix points with the
// first axis slowest and the last fastest; axes linked by `link` advance together, at the
// place of the group's first axis. So trials [0, points) are repeat 0 of every point, and a
// partly finished sweep already compares every point.
// Trial seed = sweep seed + repeat: every matrix point of one repeat sees the same
// requests (common random numbers), and the repeats differ.
absl::StatusOr<Sweep> ParseSweep(const std::string& yaml_text, const std::string& source,
                                 const SweepLimits& limits = {});

}  // namespace kvscope::coordinator

#endif  // KVSCOPE_COORDINATOR_SWEEP_H_
