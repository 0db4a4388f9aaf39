// File: engine/bench_config.h
//
// One benchmark run ("trial"): model, KV strategy and its parameters, memory budget,
// workload, scheduler limits, seed. Built from flags or from a YAML file whose keys are
// those of a sweep's base trial (docs/bench.md), e.g.
//
//   model: {preset: llama-tiny}          # or {path: /models/Meta-Llama-3-8B}
//   strategy: {name: paged, block_size: 16}
//   memory: {kv_bytes: 64MiB}
//   workload: {num_requests: 200, arrival: poisson, request_rate: 8,
//              input_len: {dist: lognormal, mean: 256, spread: 0.5}, output_len: 64}
//   scheduler: {max_num_seqs: 256, max_num_batched_tokens: 2048, chunked_prefill: true}
//   tp: 1
//   backend: cpu                          # or cuda, with gpu: {dtype: bf16, cuda_graphs: true}
//   seed: 7
//
// Every error names the file, line and key, what was found and what is allowed.
#ifndef KVSCOPE_ENGINE_BENCH_CONFIG_H_
#define KVSCOPE_ENGINE_BENCH_CONFIG_H_

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "engine/metrics.h"
#include "engine/scheduler.h"
#include "engine/workload.h"
#include "nlohmann/json.hpp"

namespace kvscope::engine {

// A deliberate failure for tests of the cluster's fault handling (docs/bench.md, `fault:`):
// the bench process ends itself once `exit_after_requests` requests have finished.
enum class FaultKind { kNone, kAbort, kKill, kExit };
struct BenchFault {
  FaultKind kind = FaultKind::kNone;  // kNone: no fault
  int64_t exit_after_requests = 0;    // finished requests before the fault fires
};
// "abort" (SIGABRT), "kill" (SIGKILL), "exit" (exit code 3); "none" for kNone.
std::string FaultKindName(FaultKind kind);

struct BenchConfig {
  std::string model;     // a directory or "preset:NAME"
  uint64_t weights_seed = 0;
  std::string strategy = "paged";
  std::map<std::string, std::string> strategy_params;  // validated by kvcache/registry.h
  int64_t kv_memory_bytes = 64LL << 20;  // device KV budget per rank
  int32_t tp = 1;
  // Worker processes the tensor-parallel group spans (a "gang", docs/cluster.md): process p
  // runs ranks [p * tp / nodes, (p + 1) * tp / nodes). 1 = every rank in this process.
  int32_t nodes = 1;
  int32_t threads = 0;  // CPU threads over this process's ranks; 0 = every core
  // Where the forward pass runs: "cpu" (engine/engine.h) or "cuda" (engine/cuda/
  // gpu_engine.h: one GPU per rank, devices 0..tp-1; kvscope built with KVSCOPE_CUDA).
  std::string backend = "cpu";
  // backend cuda (`gpu: {dtype: bf16, cuda_graphs: false}`): storage type of weights,
  // activations and the KV pool ("bf16", "fp16" or "f32"), and CUDA graphs for decode steps.
  std::string gpu_dtype = "bf16";
  bool cuda_graphs = false;
  WorkloadSpec workload;  // workload.seed is the trial seed
  SchedulerOptions scheduler;  // max_model_len 0 = the model's context
  SloSpec slo;  // goodput objectives
  std::string out_dir;
  BenchFault fault;  // test-only; kind kNone unless the YAML has `fault:`
};

// Parses YAML text into `config` (fields present in the text replace those in `config`).
// `source` (the file path) prefixes errors: "FILE:LINE: key 'workload.arrival': found
// 'poison', allowed: all, poisson, gamma, constant, closed, trace". Unknown keys are errors.
absl::Status ParseBenchConfigYaml(const std::string& yaml_text, const std::string& source,
                                  BenchConfig* config);

// Checks the whole configuration before any work: model given, budget > 0, tp >= 1,
// nodes >= 1 dividing tp (messages start with "nodes"), backend "cpu" or "cuda", the workload (ValidateWorkloadSpec) and scheduler options
// (ValidateSchedulerOptions, except max_model_len 0 which is filled from the model later),
// out_dir given.
absl::Status ValidateBenchConfig(const BenchConfig& config);

// OK if this binary can run `config` (FailedPrecondition for `backend: cuda` in a build
// without CUDA, saying how to fix it; gangs, nodes > 1, run on either backend). Separate from ValidateBenchConfig because a
// coordinator built without CUDA still validates sweeps whose trials run on GPU workers.
absl::Status CheckBenchConfigRunnable(const BenchConfig& config);

// The configuration as JSON, recorded in result.json.
nlohmann::json BenchConfigToJson(const BenchConfig& config);

// "all"/"poisson"/... <-> ArrivalKind, and the same for length distributions and sources.
absl::StatusOr<ArrivalKind> ParseArrivalKind(const std::string& text);
absl::StatusOr<LengthDist> ParseLengthDist(const std::string& text);
absl::StatusOr<SourceKind> ParseSourceKind(const std::string& text);
std::string ArrivalKindName(ArrivalKind kind);
std::string LengthDistName(LengthDist dist);
std::string SourceKindName(SourceKind kind);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_BENCH_CONFIG_H_
