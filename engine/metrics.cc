// Summaries and their JSON/table forms. File output and validation: metrics_io.cc.
#include "engine/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvscope::engine {
namespace {

// Per-request latencies in ms; nullopt where undefined (see RequestToJson).

nlohmann::json JsonNumber(double value) {
  if (std::isnan(value)) return nullptr;
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  return value;
}

nlohmann::json JsonOptional(const std::optional<double>& value) {
  if (!value.has_value()) return nullptr;
  return JsonNumber(*value);
}

std::optional<double> TtftMs(const RequestRecord& r) {
  if (r.first_token_s >= 0) return (r.first_token_s - r.arrival_s) * 1000.0;
  if (!r.token_times_s.empty()) return (r.token_times_s.front() - r.arrival_s) * 1000.0;
  return std::nullopt;
}

double FinishS(const RequestRecord& r) {
  if (r.finish_s >= 0) return r.finish_s;
  if (!r.token_times_s.empty()) return r.token_times_s.back();
  return r.arrival_s;
}

std::optional<double> E2elMs(const RequestRecord& r) {
  if (!r.completed) return std::nullopt;
  return (FinishS(r) - r.arrival_s) * 1000.0;
}

std::optional<double> TpotMs(const RequestRecord& r) {
  if (!r.completed || r.output_tokens <= 1) return std::nullopt;
  const std::optional<double> ttft = TtftMs(r);
  if (!ttft.has_value()) return std::nullopt;
  return (*E2elMs(r) - *ttft) / static_cast<double>(r.output_tokens - 1);
}

constexpr double kInf = std::numeric_limits<double>::infinity();

double StepDuration(const StepRecord& s) { return s.schedule_s + s.forward_s + s.sample_s; }

// vLLM: a request is good if every given objective >= its metric (TPOT 0 for one token).
bool MeetsObjectives(const RequestRecord& r, const SloSpec& slo) {
  if (slo.ttft_ms.has_value()) {
    const std::optional<double> ttft = TtftMs(r);
    if (ttft.has_value() && !(*slo.ttft_ms >= *ttft)) return false;
  }
  if (slo.tpot_ms.has_value() && !(*slo.tpot_ms >= TpotMs(r).value_or(0.0))) {
    return false;
  }
  if (slo.e2el_ms.has_value() && !(*slo.e2el_ms >= *E2elMs(r))) return false;
  return true;
}

// Most requests open at once over half-open [arrival, end) intervals; zero-length intervals
// count at their instant.
int32_t PeakConcurrency(const std::vector<RequestRecord>& requests,
                        const std::vector<StepRecord>& steps) {
  double run_end = -kInf;
  for (const StepRecord& s : steps) run_end = std::max(run_end, s.start_s + StepDuration(s));
  for (const RequestRecord& r : requests) {
    if (r.finish_s >= 0) run_end = std::max(run_end, r.finish_s);
  }
  // Events at one time: ends (0) before starts (1) before instants (2).
  std::vector<std::pair<double, int>> events;
  events.reserve(2 * requests.size());
  for (const RequestRecord& r : requests) {
    if (r.arrival_s < 0) continue;  // never arrived (the run stopped first)
    const double end = std::max(r.finish_s >= 0 ? r.finish_s : run_end, r.arrival_s);
    if (end > r.arrival_s) {
      events.emplace_back(r.arrival_s, 1);
      events.emplace_back(end, 0);
    } else {
      events.emplace_back(r.arrival_s, 2);
    }
  }
  std::sort(events.begin(), events.end());
  int32_t open = 0, peak = 0;
  for (const auto& [time, kind] : events) {
    if (kind == 0) {
      --open;
    } else if (kind == 1) {
      peak = std::max(peak, ++open);
    } else {
      peak = std::max(peak, open + 1);
    }
  }
  return peak;
}

std::optional<double> MeanOfPresent(const std::vector<RequestRecord>& requests,
                                    std::optional<double> RequestRecord::*field) {
  double sum = 0;
  int64_t n = 0;
  for (const RequestRecord& r : requests) {
    const std::optional<double>& v = r.*field;
    if (v.has_value() && std::isfinite(*v)) {
      sum += *v;
      ++n;
    }
  }
  if (n == 0) return std::nullopt;
  return sum / static_cast<double>(n);
}

}  // namespace

bool HasObjective(const SloSpec& slo) {
  return slo.ttft_ms.has_value() || slo.tpot_ms.has_value() || slo.e2el_ms.has_value();
}

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  p = std::clamp(p, 0.0, 1.0);
  const double rank = p * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  std::nth_element(values.begin(), values.begin() + lo, values.end());
  const double lo_value = values[lo];
  if (hi == lo) return lo_value;
  // The next order statistic is the minimum of the part after lo.
  const double hi_value = *std::min_element(values.begin() + lo + 1, values.end());
  // numpy's _lerp form, exact at both ends.
  const double t = rank - static_cast<double>(lo);
  const double diff = hi_value - lo_value;
  return t >= 0.5 ? hi_value - diff * (1.0 - t) : lo_value + diff * t;
}

LatencyStats ComputeLatencyStats(const std::vector<double>& values) {
  LatencyStats stats;
  if (values.empty()) return stats;
  const double n = static_cast<double>(values.size());
  stats.mean = std::accumulate(values.begin(), values.end(), 0.0) / n;
  double sq = 0;
  for (double v : values) sq += (v - stats.mean) * (v - stats.mean);
  stats.std = std::sqrt(sq / n);
  stats.p50 = Percentile(values, 0.50);
  stats.median = stats.p50;
  stats.p90 = Percentile(values, 0.90);
  stats.p95 = Percentile(values, 0.95);
  stats.p99 = Percentile(values, 0.99);
  return stats;
}

Summary Summarize(const std::vector<RequestRecord>& requests, const std::vector<StepRecord>& steps,
                  double target_rate, const SloSpec& slo) {
  Summary s;
  s.target_request_rate = target_rate;
  s.slo = slo;

  // Requests.
  std::vector<double> ttft, tpot, itl, e2el;
  double first_arrival = kInf, last_finish = -kInf;
  int64_t good = 0;
  for (const RequestRecord& r : requests) {
    if (!r.completed) {
      ++s.failed;
      continue;
    }
    ++s.completed;
    s.total_input_tokens += r.input_tokens;
    s.total_output_tokens += r.output_tokens;
    first_arrival = std::min(first_arrival, r.arrival_s);
    last_finish = std::max(last_finish, FinishS(r));
    if (std::optional<double> v = TtftMs(r)) ttft.push_back(*v);
    if (std::optional<double> v = TpotMs(r)) tpot.push_back(*v);
    e2el.push_back(*E2elMs(r));
    for (size_t i = 1; i < r.token_times_s.size(); ++i) {
      itl.push_back((r.token_times_s[i] - r.token_times_s[i - 1]) * 1000.0);
    }
    if (HasObjective(slo) && MeetsObjectives(r, slo)) ++good;
  }
  s.ttft_ms = ComputeLatencyStats(ttft);
  s.tpot_ms = ComputeLatencyStats(tpot);
  s.itl_ms = ComputeLatencyStats(itl);
  s.e2el_ms = ComputeLatencyStats(e2el);
  if (s.completed > 0) s.duration_s = last_finish - first_arrival;
  if (s.duration_s > 0) {
    s.request_throughput = static_cast<double>(s.completed) / s.duration_s;
    s.output_throughput = static_cast<double>(s.total_output_tokens) / s.duration_s;
    s.total_token_throughput =
        static_cast<double>(s.total_input_tokens + s.total_output_tokens) / s.duration_s;
    s.request_goodput = static_cast<double>(good) / s.duration_s;
  }

  double lo = kInf, hi = -kInf;
  int64_t arrived = 0;
  for (const RequestRecord& r : requests) {
    if (r.arrival_s < 0) continue;  // never arrived (the run stopped first)
    ++arrived;
    lo = std::min(lo, r.arrival_s);
    hi = std::max(hi, r.arrival_s);
  }
  if (arrived >= 2) {
    s.achieved_request_rate = hi > lo ? static_cast<double>(arrived - 1) / (hi - lo) : kInf;
  }
  s.peak_concurrency = PeakConcurrency(requests, steps);

  // Steps, in start order.
  std::vector<const StepRecord*> ordered;
  ordered.reserve(steps.size());
  for (const StepRecord& step : steps) ordered.push_back(&step);
  std::stable_sort(ordered.begin(), ordered.end(), [](const StepRecord* a, const StepRecord* b) {
    return a->start_s < b->start_s;
  });
  s.num_steps = static_cast<int64_t>(steps.size());
  double waste_dt = 0, reserved_dt = 0, schedule = 0, forward = 0, sample = 0;
  double batch_sum = 0, token_sum = 0;
  int64_t query = 0, hit = 0, step_preemptions = 0;
  int64_t selected = 0, selections = 0, mass_samples = 0, decode_tokens = 0;
  double mass_sum = 0;
  for (size_t i = 0; i < ordered.size(); ++i) {
    const StepRecord& st = *ordered[i];
    const double dt =
        i + 1 < ordered.size() ? ordered[i + 1]->start_s - st.start_s : StepDuration(st);
    waste_dt += static_cast<double>(st.kv_reserved_bytes - st.kv_used_bytes) * dt;
    reserved_dt += static_cast<double>(st.kv_reserved_bytes) * dt;
    s.peak_kv_reserved_bytes = std::max(s.peak_kv_reserved_bytes, st.kv_reserved_bytes);
    s.peak_kv_used_bytes = std::max(s.peak_kv_used_bytes, st.kv_used_bytes);
    s.peak_host_kv_bytes = std::max(s.peak_host_kv_bytes, st.host_kv_bytes);
    s.peak_swapped_bytes = std::max(s.peak_swapped_bytes, st.swapped_bytes);
    schedule += st.schedule_s;
    forward += st.forward_s;
    sample += st.sample_s;
    batch_sum += st.batch_size;
    token_sum += static_cast<double>(st.num_tokens);
    query += st.prefix_query_tokens;
    hit += st.prefix_hit_tokens;
    step_preemptions += st.preemptions;
    s.h2d_bytes += st.h2d_bytes;
    selected += st.kv_selected_tokens;
    selections += st.kv_selections;
    mass_sum += st.mass_captured_sum;
    mass_samples += st.mass_samples;
    decode_tokens += st.decode_tokens;
  }
  if (decode_tokens > 0) {
    s.h2d_bytes_per_token = static_cast<double>(s.h2d_bytes) / static_cast<double>(decode_tokens);
  }
  if (selections > 0) {
    s.kv_selected_tokens_mean = static_cast<double>(selected) / static_cast<double>(selections);
  }
  if (mass_samples > 0) s.attention_mass_captured = mass_sum / static_cast<double>(mass_samples);
  if (reserved_dt > 0) s.kv_waste_fraction = waste_dt / reserved_dt;
  if (query > 0) s.prefix_cache_hit_rate = static_cast<double>(hit) / static_cast<double>(query);
  const double busy = schedule + forward + sample;
  if (busy > 0) {
    s.schedule_time_fraction = schedule / busy;
    s.forward_time_fraction = forward / busy;
    s.sample_time_fraction = sample / busy;
  }
  if (!steps.empty()) {
    s.mean_batch_size = batch_sum / static_cast<double>(steps.size());
    s.mean_tokens_per_step = token_sum / static_cast<double>(steps.size());
    s.preemptions = step_preemptions;
  } else {
    for (const RequestRecord& r : requests) s.preemptions += r.preemptions;
  }

  s.quality_mean_kl = MeanOfPresent(requests, &RequestRecord::quality_mean_kl);
  s.quality_top1_agreement = MeanOfPresent(requests, &RequestRecord::quality_top1_agreement);
  return s;
}

nlohmann::json SummaryToJson(const Summary& s) {
  nlohmann::json j = nlohmann::json::object();
  j["completed"] = s.completed;
  j["failed"] = s.failed;
  j["duration"] = JsonNumber(s.duration_s);
  j["total_input_tokens"] = s.total_input_tokens;
  j["total_output_tokens"] = s.total_output_tokens;
  j["request_throughput"] = JsonNumber(s.request_throughput);
  j["request_goodput"] = HasObjective(s.slo) ? JsonNumber(s.request_goodput) : nullptr;
  j["output_throughput"] = JsonNumber(s.output_throughput);
  j["total_token_throughput"] = JsonNumber(s.total_token_throughput);
  const std::pair<const char*, const LatencyStats*> latencies[] = {
      {"ttft", &s.ttft_ms}, {"tpot", &s.tpot_ms}, {"itl", &s.itl_ms}, {"e2el", &s.e2el_ms}};
  for (const auto& [name, st] : latencies) {
    const std::string suffix = absl::StrCat("_", name, "_ms");
    j["mean" + suffix] = JsonNumber(st->mean);
    j["median" + suffix] = JsonNumber(st->median);
    j["std" + suffix] = JsonNumber(st->std);
    j["p50" + suffix] = JsonNumber(st->p50);
    j["p90" + suffix] = JsonNumber(st->p90);
    j["p95" + suffix] = JsonNumber(st->p95);
    j["p99" + suffix] = JsonNumber(st->p99);
  }
  j["target_request_rate"] = s.target_request_rate > 0 ? JsonNumber(s.target_request_rate)
                                                       : nlohmann::json("inf");
  j["achieved_request_rate"] = JsonNumber(s.achieved_request_rate);
  j["peak_concurrency"] = s.peak_concurrency;
  j["slo"] = {{"ttft_ms", JsonOptional(s.slo.ttft_ms)},
              {"tpot_ms", JsonOptional(s.slo.tpot_ms)},
              {"e2el_ms", JsonOptional(s.slo.e2el_ms)}};
  j["peak_kv_reserved_bytes"] = s.peak_kv_reserved_bytes;
  j["peak_kv_used_bytes"] = s.peak_kv_used_bytes;
  j["kv_waste_fraction"] = JsonNumber(s.kv_waste_fraction);
  j["peak_host_kv_bytes"] = s.peak_host_kv_bytes;
  j["peak_swapped_bytes"] = s.peak_swapped_bytes;
  j["preemptions"] = s.preemptions;
  j["num_steps"] = s.num_steps;
  j["mean_batch_size"] = JsonNumber(s.mean_batch_size);
  j["mean_tokens_per_step"] = JsonNumber(s.mean_tokens_per_step);
  j["prefix_cache_hit_rate"] = JsonNumber(s.prefix_cache_hit_rate);
  j["schedule_time_fraction"] = JsonNumber(s.schedule_time_fraction);
  j["forward_time_fraction"] = JsonNumber(s.forward_time_fraction);
  j["sample_time_fraction"] = JsonNumber(s.sample_time_fraction);
  j["quality_mean_kl"] = JsonOptional(s.quality_mean_kl);
  j["quality_top1_agreement"] = JsonOptional(s.quality_top1_agreement);
  j["quality_perplexity"] = JsonOptional(s.quality_perplexity);
  j["quality_perplexity_full"] = JsonOptional(s.quality_perplexity_full);
  j["h2d_bytes"] = s.h2d_bytes;
  j["h2d_bytes_per_token"] = JsonNumber(s.h2d_bytes_per_token);
  j["kv_selected_tokens_mean"] = JsonOptional(s.kv_selected_tokens_mean);
  j["attention_mass_captured"] = JsonOptional(s.attention_mass_captured);
  nlohmann::json per_layer = nlohmann::json::array();
  for (double v : s.kv_selected_tokens_per_layer) per_layer.push_back(JsonNumber(v));
  j["kv_selected_tokens_per_layer"] = per_layer;
  return j;
}

nlohmann::json RequestToJson(const RequestRecord& r) {
  const auto time_or_null = [](double t) -> nlohmann::json {
    return t >= 0 ? JsonNumber(t) : nlohmann::json(nullptr);
  };
  nlohmann::json token_times = nlohmann::json::array();
  for (double t : r.token_times_s) token_times.push_back(JsonNumber(t));
  nlohmann::json j = nlohmann::json::object();
  j["id"] = r.id;
  j["arrival_s"] = JsonNumber(r.arrival_s);
  j["first_scheduled_s"] = time_or_null(r.first_scheduled_s);
  j["first_token_s"] = time_or_null(r.first_token_s);
  j["finish_s"] = time_or_null(r.finish_s);
  j["ttft_ms"] = JsonOptional(TtftMs(r));
  j["tpot_ms"] = JsonOptional(TpotMs(r));
  j["e2el_ms"] = JsonOptional(E2elMs(r));
  j["input_tokens"] = r.input_tokens;
  j["output_tokens"] = r.output_tokens;
  j["preemptions"] = r.preemptions;
  j["prefix_hit_tokens"] = r.prefix_hit_tokens;
  j["completed"] = r.completed;
  j["error"] = r.error;
  j["output_ids"] = r.output_ids;
  j["token_times_s"] = std::move(token_times);
  j["conversation_id"] = r.conversation_id;
  j["turn"] = r.turn;
  j["quality_mean_kl"] = JsonOptional(r.quality_mean_kl);
  j["quality_top1_agreement"] = JsonOptional(r.quality_top1_agreement);
  return j;
}

nlohmann::json StepToJson(const StepRecord& s) {
  return {{"start_s", JsonNumber(s.start_s)},
          {"schedule_s", JsonNumber(s.schedule_s)},
          {"forward_s", JsonNumber(s.forward_s)},
          {"sample_s", JsonNumber(s.sample_s)},
          {"batch_size", s.batch_size},
          {"num_tokens", s.num_tokens},
          {"prefill_tokens", s.prefill_tokens},
          {"decode_tokens", s.decode_tokens},
          {"preemptions", s.preemptions},
          {"running", s.running},
          {"waiting", s.waiting},
          {"swapped", s.swapped},
          {"kv_reserved_bytes", s.kv_reserved_bytes},
          {"kv_used_bytes", s.kv_used_bytes},
          {"host_kv_bytes", s.host_kv_bytes},
          {"swapped_bytes", s.swapped_bytes},
          {"prefix_query_tokens", s.prefix_query_tokens},
          {"prefix_hit_tokens", s.prefix_hit_tokens},
          {"h2d_bytes", s.h2d_bytes},
          {"kv_selected_tokens", s.kv_selected_tokens},
          {"kv_selections", s.kv_selections}};
}

void ApplyKvCounters(const kvcache::KvCounters& c, Summary* summary) {
  summary->kv_selected_tokens_per_layer.clear();
  if (c.selections_per_layer.empty()) return;
  for (size_t l = 0; l < c.selections_per_layer.size(); ++l) {
    const int64_t n = c.selections_per_layer[l];
    summary->kv_selected_tokens_per_layer.push_back(
        n > 0 ? static_cast<double>(c.selected_tokens_per_layer[l]) / static_cast<double>(n) : 0.0);
  }
}

namespace {

constexpr int kTableWidth = 50;

std::string Rule(const std::string& title, char fill) {
  const int len = static_cast<int>(title.size());
  if (len >= kTableWidth) return title + "\n";
  const int left = (kTableWidth - len) / 2;
  return std::string(left, fill) + title + std::string(kTableWidth - len - left, fill) + "\n";
}

std::string Row(const std::string& label, const std::string& value) {
  return absl::StrFormat("%-40s %s\n", label, value);
}

std::string Fixed(double v, int digits = 2) {
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return absl::StrFormat("%.*f", digits, v);
}

std::string Mib(int64_t bytes) {
  return Fixed(static_cast<double>(bytes) / (1024.0 * 1024.0));
}

std::string Percent(double fraction) { return Fixed(100.0 * fraction); }

}  // namespace

std::string FormatSummaryTable(const Summary& s) {
  std::string out = Rule(" Serving Benchmark Result ", '=');
  out += Row("Successful requests:", absl::StrCat(s.completed));
  out += Row("Failed requests:", absl::StrCat(s.failed));
  out += Row("Benchmark duration (s):", Fixed(s.duration_s));
  out += Row("Total input tokens:", absl::StrCat(s.total_input_tokens));
  out += Row("Total generated tokens:", absl::StrCat(s.total_output_tokens));
  out += Row("Request rate target (req/s):",
             s.target_request_rate > 0 ? Fixed(s.target_request_rate) : "inf");
  out += Row("Request rate achieved (req/s):", Fixed(s.achieved_request_rate));
  out += Row("Peak concurrency:", absl::StrCat(s.peak_concurrency));
  out += Row("Request throughput (req/s):", Fixed(s.request_throughput));
  if (HasObjective(s.slo)) out += Row("Request goodput (req/s):", Fixed(s.request_goodput));
  out += Row("Output token throughput (tok/s):", Fixed(s.output_throughput));
  out += Row("Total token throughput (tok/s):", Fixed(s.total_token_throughput));
  const struct {
    const char* title;
    const char* name;
    const LatencyStats* stats;
  } latencies[] = {{"Time to First Token", "TTFT", &s.ttft_ms},
                   {"Time per Output Token (excl. 1st token)", "TPOT", &s.tpot_ms},
                   {"Inter-token Latency", "ITL", &s.itl_ms},
                   {"End-to-end Latency", "E2EL", &s.e2el_ms}};
  for (const auto& l : latencies) {
    out += Rule(l.title, '-');
    out += Row(absl::StrCat("Mean ", l.name, " (ms):"), Fixed(l.stats->mean));
    out += Row(absl::StrCat("Median ", l.name, " (ms):"), Fixed(l.stats->median));
    out += Row(absl::StrCat("P99 ", l.name, " (ms):"), Fixed(l.stats->p99));
  }
  out += Rule("KV cache", '-');
  out += Row("Peak KV reserved (MiB):", Mib(s.peak_kv_reserved_bytes));
  out += Row("Peak KV used (MiB):", Mib(s.peak_kv_used_bytes));
  out += Row("KV waste (% of reserved, time-weighted):", Percent(s.kv_waste_fraction));
  out += Row("Peak host KV (MiB):", Mib(s.peak_host_kv_bytes));
  out += Row("Peak swapped (MiB):", Mib(s.peak_swapped_bytes));
  if (s.h2d_bytes > 0) {
    out += Row("Host-to-device KV per token (KiB):", Fixed(s.h2d_bytes_per_token / 1024.0));
  }
  if (s.kv_selected_tokens_mean.has_value()) {
    out += Row("Tokens selected per sparse layer:", Fixed(*s.kv_selected_tokens_mean));
  }
  if (s.attention_mass_captured.has_value()) {
    out += Row("Attention mass captured (%):", Percent(*s.attention_mass_captured));
  }
  out += Row("Prefix cache hit rate (%):", Percent(s.prefix_cache_hit_rate));
  out += Rule("Scheduler", '-');
  out += Row("Preemptions:", absl::StrCat(s.preemptions));
  out += Row("Steps:", absl::StrCat(s.num_steps));
  out += Row("Mean batch size:", Fixed(s.mean_batch_size));
  out += Row("Mean tokens per step:", Fixed(s.mean_tokens_per_step));
  out += Row("Schedule / forward / sample (%):",
             absl::StrCat(Percent(s.schedule_time_fraction), " / ",
                          Percent(s.forward_time_fraction), " / ",
                          Percent(s.sample_time_fraction)));
  if (s.quality_mean_kl.has_value() || s.quality_top1_agreement.has_value() ||
      s.quality_perplexity.has_value() || s.quality_perplexity_full.has_value()) {
    out += Rule("Quality vs full cache", '-');
    if (s.quality_mean_kl.has_value()) {
      out += Row("Mean KL divergence:", Fixed(*s.quality_mean_kl, 4));
    }
    if (s.quality_top1_agreement.has_value()) {
      out += Row("Top-1 agreement (%):", Percent(*s.quality_top1_agreement));
    }
    if (s.quality_perplexity.has_value()) {
      out += Row("Perplexity (strategy):", Fixed(*s.quality_perplexity, 4));
    }
    if (s.quality_perplexity_full.has_value()) {
      out += Row("Perplexity (full cache):", Fixed(*s.quality_perplexity_full, 4));
    }
  }
  out += std::string(kTableWidth, '=') + "\n";
  return out;
}

}  // namespace kvscope::engine
