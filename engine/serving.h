// File: engine/serving.h
//
// The serving loop behind `kvscope bench`: replays a workload against the engine with
// continuous batching, under a KV strategy, and records every request's timeline and
// every step's scheduler and memory state (engine/metrics.h).
//
// Time comes from the injected Clock; arrivals in the future are waited for with the
// injected sleep function (a FakeClock test advances the clock instead of sleeping).
// Closed-loop workloads keep `concurrency` requests in flight; a multi-turn conversation's
// next turn arrives `think_time_s` after the previous turn finishes, with the conversation
// so far (earlier prompts and outputs) prepended to its new tokens.
#ifndef KVSCOPE_ENGINE_SERVING_H_
#define KVSCOPE_ENGINE_SERVING_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "engine/engine.h"
#include "engine/metrics.h"
#include "engine/scheduler.h"
#include "engine/workload.h"
#include "kvcache/kv_manager.h"

namespace kvscope::engine {

struct ServingProgress {
  int64_t finished = 0;  // completed or rejected
  int64_t total = 0;
  double elapsed_s = 0;
};

struct ServingOptions {
  SchedulerOptions scheduler;
  ArrivalKind arrival = ArrivalKind::kAllAtOnce;  // kClosedLoop changes how requests start
  int32_t concurrency = 0;                        // closed loop
  bool ignore_eos = true;
  std::vector<int32_t> eos_ids;                   // used when !ignore_eos
  const Clock* clock = nullptr;                   // null: RealClock
  std::function<void(double seconds)> sleep;      // null: std::this_thread::sleep_for
  const std::atomic<bool>* stop = nullptr;        // set (e.g. by SIGINT) to end early
  std::function<void(const ServingProgress&)> on_progress;  // after every step
};

struct ServingResult {
  std::vector<RequestRecord> requests;  // in workload order
  std::vector<StepRecord> steps;
  bool complete = true;
  std::string status_message;  // why the run stopped early
};

// Runs the workload. `engine` must have been created with `kv`'s rank caches. The result
// holds whatever was measured even when the run stops early (complete = false): on a stop
// request, or when the engine fails (the error is in status_message; requests in flight are
// marked with it).
ServingResult RunServing(Engine& engine, kvcache::KvManager& kv,
                         const std::vector<RequestSpec>& workload, const ServingOptions& options);

// One forward step of any engine (the CPU Engine, the GPU engine of engine/cuda/): the batch
// and the KV plan the manager froze for it (an engine whose KV lives elsewhere mirrors the
// plan's block transfers before the step). Same contract as Engine::Forward.
using StepForward = std::function<absl::StatusOr<ForwardOutput>(
    absl::Span<const SeqInput> batch, const kvcache::StepPlan& plan)>;

// RunServing over a StepForward; the Engine overload above calls this one.
ServingResult RunServing(const StepForward& forward, kvcache::KvManager& kv,
                         const std::vector<RequestSpec>& workload, const ServingOptions& options);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_SERVING_H_
