// File: engine/metrics.h
//
// What a serving run measured and how it is summarized. Definitions follow
// ../shared/reference/kv-strategies.md section 6 (vLLM's serving benchmark):
//   TTFT  = first token time - arrival
//   ITL   = gaps between consecutive token times of a request
//   TPOT  = (E2EL - TTFT) / (output_tokens - 1), only for output_tokens > 1
//   E2EL  = finish - arrival
//   request_throughput = completed / duration; output_throughput = sum(output) / duration;
//   total_token_throughput = (sum(input) + sum(output)) / duration; duration = from the
//   first arrival to the last completion.
//   goodput = requests meeting every given objective / duration (TPOT counts as 0 for
//   single-token outputs).
// Times are seconds on the run's clock; summaries report milliseconds as vLLM does.
// All functions are pure: records in, numbers out.
#ifndef KVSCOPE_ENGINE_METRICS_H_
#define KVSCOPE_ENGINE_METRICS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kvcache/kv_manager.h"
#include "nlohmann/json.hpp"

namespace kvscope::engine {

// One request's timeline.
struct RequestRecord {
  int64_t id = 0;
  double arrival_s = 0;  // < 0: never arrived (the run stopped before its arrival)
  double first_scheduled_s = -1;  // -1: never scheduled
  double first_token_s = -1;
  double finish_s = -1;
  std::vector<double> token_times_s;  // time each output token was produced
  int64_t input_tokens = 0;
  int64_t output_tokens = 0;
  int32_t preemptions = 0;
  int64_t prefix_hit_tokens = 0;  // prompt tokens found in the prefix cache
  bool completed = false;
  std::string error;              // why it did not complete (rejected, interrupted, ...)
  std::vector<int32_t> output_ids;
  int64_t conversation_id = -1;
  int32_t turn = 0;
  // Quality against the full cache (lossy strategies), when measured.
  std::optional<double> quality_mean_kl;
  std::optional<double> quality_top1_agreement;
};

// One engine step.
struct StepRecord {
  double start_s = 0;
  double schedule_s = 0;  // durations of the step's three parts
  double forward_s = 0;
  double sample_s = 0;
  int32_t batch_size = 0;  // sequences in the step
  int64_t num_tokens = 0;  // tokens computed (prefill chunks + decodes)
  int64_t prefill_tokens = 0;
  int64_t decode_tokens = 0;
  int32_t preemptions = 0;  // sequences preempted while scheduling this step
  int32_t running = 0, waiting = 0, swapped = 0;  // queue sizes after scheduling
  int64_t kv_reserved_bytes = 0;  // reserved for sequences (not free pool memory)
  int64_t kv_used_bytes = 0;      // holding tokens
  int64_t host_kv_bytes = 0;
  int64_t swapped_bytes = 0;
  int64_t prefix_query_tokens = 0;  // prompt tokens looked up in the prefix cache
  int64_t prefix_hit_tokens = 0;
  // Offloading strategies (kvcache::KvCounters deltas over this step; 0 for others).
  int64_t h2d_bytes = 0;           // K/V bytes moved host -> device, summed over ranks
  int64_t kv_selected_tokens = 0;  // Σ tokens the sparse layers selected (infinigen)
  int64_t kv_selections = 0;       // (sequence, sparse layer) selections
  double mass_captured_sum = 0;    // Σ captured attention-mass shares of sampled selections
  int64_t mass_samples = 0;
};

// Latency objectives for goodput (unset = not required).
struct SloSpec {
  // Milliseconds; a request meets an objective when objective >= its metric.
  std::optional<double> ttft_ms = std::nullopt, tpot_ms = std::nullopt, e2el_ms = std::nullopt;
};

struct LatencyStats {
  double mean = 0, median = 0, std = 0, p50 = 0, p90 = 0, p95 = 0, p99 = 0;
};

struct Summary {
  int64_t completed = 0;
  int64_t failed = 0;  // rejected or interrupted
  double duration_s = 0;
  int64_t total_input_tokens = 0;
  int64_t total_output_tokens = 0;
  double request_throughput = 0;
  double output_throughput = 0;
  double total_token_throughput = 0;
  double request_goodput = 0;  // 0 when no objective is given
  LatencyStats ttft_ms, tpot_ms, itl_ms, e2el_ms;
  double target_request_rate = 0;    // 0 = unlimited (all at once)
  double achieved_request_rate = 0;  // arrivals / arrival span
  int32_t peak_concurrency = 0;      // most requests between arrival and finish at once
  // Memory.
  int64_t peak_kv_reserved_bytes = 0;
  int64_t peak_kv_used_bytes = 0;
  double kv_waste_fraction = 0;  // ∫(reserved - used)dt / ∫reserved dt over the steps
  int64_t peak_host_kv_bytes = 0;
  int64_t peak_swapped_bytes = 0;
  // Scheduler.
  int64_t preemptions = 0;
  int64_t num_steps = 0;
  double mean_batch_size = 0;
  double mean_tokens_per_step = 0;
  double prefix_cache_hit_rate = 0;  // hit tokens / queried tokens
  double schedule_time_fraction = 0, forward_time_fraction = 0, sample_time_fraction = 0;
  // Quality (lossy strategies; unset otherwise).
  std::optional<double> quality_mean_kl, quality_top1_agreement;
  // Perplexity of the bench's --perplexity-text under the strategy and under the full cache
  // (engine/quality.h); unset when not measured.
  std::optional<double> quality_perplexity, quality_perplexity_full;
  // Offloading strategies (infinigen; 0 / unset / empty otherwise):
  int64_t h2d_bytes = 0;              // Σ over steps and ranks
  double h2d_bytes_per_token = 0;     // h2d_bytes / decode tokens computed
  std::optional<double> kv_selected_tokens_mean;  // tokens a sparse layer loaded per step
  std::optional<double> attention_mass_captured;  // mean share over sampled selections
  std::vector<double> kv_selected_tokens_per_layer;  // mean per layer (ApplyKvCounters)
  // The objectives request_goodput was measured against; with none set, request_goodput is
  // 0 here and null in JSON.
  SloSpec slo;
};

// True when `slo` sets at least one objective.
bool HasObjective(const SloSpec& slo);

// Percentile with linear interpolation between order statistics (numpy's default), over
// a non-empty sample; 0 for an empty one. `p` is a fraction in [0, 1] (0.99 for p99; values
// outside are clamped): Percentile({1, 2, 3, 4}, 0.99) == 3.97.
double Percentile(std::vector<double> values, double p);
// mean, median (= p50), population std (numpy's default ddof=0) and p50/p90/p95/p99 of
// `values`; all 0 for an empty sample (as vLLM's np.mean(x or 0)).
LatencyStats ComputeLatencyStats(const std::vector<double>& values);

// Summarizes a run. `target_rate` 0 means all requests at t=0 (reported as inf in JSON).
// Latency, token and throughput figures use completed requests only; `failed` counts the
// rest. duration = last finish - first arrival of the completed requests (throughputs 0
// when it is not positive). achieved_request_rate = (n - 1) / (last - first arrival) over all
// n requests: 0 for n < 2, +inf when they all arrive at once. peak_concurrency sweeps the
// half-open intervals [arrival, finish) of all requests; one that never finished is open
// until the end of the run (the last step's end or the last finish, whichever is later).
// A completed request without a first token contributes no TTFT/TPOT/ITL sample and meets
// any TTFT objective. preemptions = sum over steps (over requests when there are no steps).
// Step-weighted figures take steps in start order; step i lasts until step i+1 starts, the
// last one for its schedule + forward + sample time. Quality means are over the requests
// (completed or not) that carry a finite value.
Summary Summarize(const std::vector<RequestRecord>& requests, const std::vector<StepRecord>& steps,
                  double target_rate, const SloSpec& slo);

// The summary as JSON with vLLM's key names (completed, request_throughput,
// output_throughput, total_token_throughput, mean_ttft_ms, median_ttft_ms, std_ttft_ms,
// p50/p90/p95/p99_ttft_ms, likewise tpot, itl, e2el) plus kvscope's own keys
// (kv_waste_fraction, peak_kv_reserved_bytes, peak_kv_used_bytes, preemptions, ...).
// Every key is listed in docs/result-schema.md. Never writes NaN or inf as a number: an
// infinite rate is the string "inf" (as vLLM's "request_rate"), NaN and unset values null.
nlohmann::json SummaryToJson(const Summary& summary);
// One request: its RequestRecord fields (times never reached as null, not -1) plus its
// ttft_ms, tpot_ms and e2el_ms (null where undefined).
nlohmann::json RequestToJson(const RequestRecord& request);
// One step: its StepRecord fields under the same names.
nlohmann::json StepToJson(const StepRecord& step);

// Fills the per-layer selection means of `summary` from a strategy's final counters
// (kvcache::KvCounters::selected_tokens_per_layer / selections_per_layer; layers never
// selected report 0). Nothing for strategies without per-layer counters.
void ApplyKvCounters(const kvcache::KvCounters& counters, Summary* summary);

// Version of the result.json schema (docs/result-schema.md).
inline constexpr int kResultSchemaVersion = 1;

struct ResultDocument {
  nlohmann::json config;       // the full run configuration
  nlohmann::json environment;  // EnvironmentFingerprint()
  Summary summary;
  std::vector<StepRecord> steps;
  std::vector<RequestRecord> requests;
  bool complete = true;        // false when the run was interrupted
  std::string status_message;  // why it is incomplete
};

// Writes DIR/result.json (schema_version, complete, config, environment, summary,
// timelines) and DIR/requests.jsonl (one RequestToJson per line, output_ids included),
// creating DIR. Each file is written to a temporary name and renamed, so a reader never sees
// half a file; requests.jsonl is renamed first, so a result.json implies its requests.jsonl.
// A null config or environment is written as {}. Errors (from the file system, or a value
// nlohmann cannot serialize) name the path; no exception escapes.
absl::Status WriteResult(const std::string& dir, const ResultDocument& doc);

// Checks a parsed result.json against schema version 1 (docs/result-schema.md): required
// keys present with their types, in the summary and in every step. Extra keys are allowed.
// InvalidArgument naming the first offending key path (e.g. "summary.mean_ttft_ms").
absl::Status ValidateResultJson(const nlohmann::json& result);
// The same for one parsed line of requests.jsonl.
absl::Status ValidateRequestJson(const nlohmann::json& request);

// A readable summary table for stdout.
std::string FormatSummaryTable(const Summary& summary);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_METRICS_H_
