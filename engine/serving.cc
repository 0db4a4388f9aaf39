#include "engine/serving.h"

#include <chrono>
#include <map>
#include <queue>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"

namespace kvscope::engine {
namespace {

// Releases requests into the scheduler as they arrive and tracks conversations and the
// closed loop.
class Arrivals {
 public:
  Arrivals(const std::vector<RequestSpec>& workload, const ServingOptions& options,
           std::vector<RequestRecord>* records, Scheduler* scheduler)
      : workload_(workload), options_(options), records_(records), scheduler_(scheduler) {
    for (size_t i = 0; i < workload.size(); ++i) {
      const RequestSpec& r = workload[i];
      if (r.conversation_id >= 0) turns_[r.conversation_id][r.turn] = static_cast<int>(i);
      if (r.turn > 0) continue;  // released when the previous turn finishes
      if (options.arrival == ArrivalKind::kClosedLoop) {
        closed_loop_queue_.push_back(static_cast<int>(i));
      } else {
        pending_.push({r.arrival_s, static_cast<int>(i)});
      }
    }
    if (options.arrival == ArrivalKind::kClosedLoop) {
      for (int32_t k = 0; k < options.concurrency; ++k) ReleaseNextClosedLoop(0.0);
    }
  }

  // Moves every request due by `now` into the scheduler.
  void ReleaseDue(double now) {
    while (!pending_.empty() && pending_.top().first <= now) {
      const auto [time, index] = pending_.top();
      pending_.pop();
      Release(index, time);
    }
  }
  bool HasPending() const { return !pending_.empty(); }
  double NextArrival() const { return pending_.top().first; }

  // A request finished at `now`: start what it unblocks.
  void OnFinished(int index, double now, bool completed) {
    const RequestSpec& r = workload_[index];
    if (r.conversation_id >= 0) {
      auto& turns = turns_[r.conversation_id];
      auto next = turns.find(r.turn + 1);
      if (next != turns.end()) {
        if (completed) {
          // The conversation so far: this turn's prompt and its output.
          std::vector<int32_t>& history = history_[r.conversation_id];
          history = prompts_[index];
          const auto& out = (*records_)[index].output_ids;
          history.insert(history.end(), out.begin(), out.end());
          const RequestSpec& n = workload_[next->second];
          pending_.push({now + n.think_time_s, next->second});
          return;
        }
        // A failed turn ends its conversation; the later turns fail with it.
        for (auto it = next; it != turns.end(); ++it) {
          RequestRecord& rec = (*records_)[it->second];
          rec.error = "an earlier turn of the conversation failed";
          ++abandoned_;
        }
      }
    }
    if (options_.arrival == ArrivalKind::kClosedLoop) ReleaseNextClosedLoop(now);
  }
  int64_t abandoned() const { return abandoned_; }

 private:
  void ReleaseNextClosedLoop(double now) {
    if (next_closed_ < closed_loop_queue_.size()) {
      pending_.push({now, closed_loop_queue_[next_closed_++]});
    }
  }

  void Release(int index, double time) {
    const RequestSpec& r = workload_[index];
    std::vector<int32_t> prompt;
    if (r.turn > 0) prompt = history_[r.conversation_id];
    prompt.insert(prompt.end(), r.prompt.begin(), r.prompt.end());
    prompts_[index] = prompt;
    RequestRecord& rec = (*records_)[index];
    rec.arrival_s = time;
    rec.input_tokens = static_cast<int64_t>(prompt.size());
    SchedRequest request;
    request.id = index;
    request.prompt = std::move(prompt);
    request.max_new_tokens = r.output_len;
    if (!options_.ignore_eos) request.eos_ids = options_.eos_ids;
    scheduler_->Add(std::move(request));
  }

  using Item = std::pair<double, int>;
  const std::vector<RequestSpec>& workload_;
  const ServingOptions& options_;
  std::vector<RequestRecord>* records_;
  Scheduler* scheduler_;
  std::priority_queue<Item, std::vector<Item>, std::greater<Item>> pending_;
  std::vector<int> closed_loop_queue_;
  size_t next_closed_ = 0;
  std::map<int64_t, std::map<int32_t, int>> turns_;  // conversation -> turn -> index
  std::map<int64_t, std::vector<int32_t>> history_;
  std::map<int, std::vector<int32_t>> prompts_;
  int64_t abandoned_ = 0;
};

}  // namespace

ServingResult RunServing(Engine& engine, kvcache::KvManager& kv,
                         const std::vector<RequestSpec>& workload, const ServingOptions& options) {
  return RunServing(
      [&engine](absl::Span<const SeqInput> batch, const kvcache::StepPlan&) {
        return engine.Forward(batch);
      },
      kv, workload, options);
}

ServingResult RunServing(const StepForward& forward_step, kvcache::KvManager& kv,
                         const std::vector<RequestSpec>& workload, const ServingOptions& options) {
  const Clock& clock = options.clock != nullptr ? *options.clock : RealClock::Get();
  auto sleep = options.sleep ? options.sleep : [](double seconds) {
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  };
  ServingResult result;
  kvcache::KvCounters last_counters = kv.Counters();
  result.requests.resize(workload.size());
  for (size_t i = 0; i < workload.size(); ++i) {
    result.requests[i].id = workload[i].id;
    result.requests[i].arrival_s = -1;  // until it arrives
    result.requests[i].conversation_id = workload[i].conversation_id;
    result.requests[i].turn = workload[i].turn;
  }
  Scheduler scheduler(options.scheduler, kv);
  Arrivals arrivals(workload, options, &result.requests, &scheduler);
  const double t0 = clock.NowSeconds();
  auto now = [&] { return clock.NowSeconds() - t0; };
  int64_t finished_count = 0;
  const int64_t total = static_cast<int64_t>(workload.size());

  auto finish = [&](const FinishedSeq& f, double t) {
    RequestRecord& rec = result.requests[f.id];
    rec.completed = f.completed;
    rec.error = f.error;
    rec.finish_s = f.completed ? t : -1;
    rec.output_ids = f.output;
    rec.output_tokens = static_cast<int64_t>(f.output.size());
    rec.preemptions = f.preemptions;
    rec.prefix_hit_tokens = f.prefix_hit_tokens;
    ++finished_count;
    arrivals.OnFinished(static_cast<int>(f.id), t, f.completed);
  };
  auto stop_early = [&](const std::string& message) {
    result.complete = false;
    result.status_message = message;
    for (size_t i = 0; i < result.requests.size(); ++i) {
      RequestRecord& rec = result.requests[i];
      if (rec.completed) continue;
      if (rec.error.empty()) rec.error = message;
      // Keep the tokens generated so far by requests still in flight.
      if (const std::vector<int32_t>* generated = scheduler.Generated(static_cast<int64_t>(i))) {
        rec.output_ids = *generated;
        rec.output_tokens = static_cast<int64_t>(generated->size());
      }
    }
  };

  // Sleeps until the next arrival and releases it even if the clock stopped a hair short
  // (a clock's resolution must not turn the wait into a busy loop).
  auto wait_for_next_arrival = [&] {
    const double target = arrivals.NextArrival();
    sleep(std::max(0.0, target - now()));
    arrivals.ReleaseDue(std::max(now(), target));
  };

  while (true) {
    arrivals.ReleaseDue(now());
    if (options.stop != nullptr && options.stop->load()) {
      stop_early("interrupted before all requests finished");
      break;
    }
    if (!scheduler.HasWork()) {
      if (!arrivals.HasPending()) break;
      wait_for_next_arrival();
      continue;
    }
    StepRecord step;
    step.start_s = now();
    absl::StatusOr<ScheduleOutput> out = scheduler.Schedule();
    if (!out.ok()) {
      stop_early(absl::StrCat("scheduler failed: ", out.status().message()));
      break;
    }
    const double scheduled_at = now();
    if (out->seqs.empty()) {
      const auto rejected = scheduler.Update(*out, {});
      for (const FinishedSeq& f : rejected) finish(f, scheduled_at);
      if (rejected.empty()) {
        // Nothing can run and nothing finished: wait for an arrival, or give up.
        if (arrivals.HasPending()) {
          wait_for_next_arrival();
          continue;
        }
        stop_early("requests are waiting for KV memory that nothing will free");
        break;
      }
      continue;
    }
    for (const ScheduledSeq& s : out->seqs) {
      RequestRecord& rec = result.requests[s.id];
      if (rec.first_scheduled_s < 0) rec.first_scheduled_s = step.start_s;
    }
    step.schedule_s = scheduled_at - step.start_s;
    step.batch_size = static_cast<int32_t>(out->seqs.size());
    step.prefill_tokens = out->prefill_tokens;
    step.decode_tokens = out->decode_tokens;
    step.num_tokens = out->prefill_tokens + out->decode_tokens;
    step.preemptions = out->preemptions;
    step.prefix_query_tokens = out->prefix_query_tokens;
    step.prefix_hit_tokens = out->prefix_hit_tokens;
    const kvcache::KvUsage usage = kv.Usage();
    step.kv_reserved_bytes = usage.reserved_bytes;
    step.kv_used_bytes = usage.used_bytes;
    step.host_kv_bytes = usage.host_bytes;
    step.swapped_bytes = usage.swapped_bytes;
    step.running = scheduler.num_running();
    step.waiting = scheduler.num_waiting();
    step.swapped = scheduler.num_swapped();

    static const kvcache::StepPlan kNoPlan;
    absl::StatusOr<ForwardOutput> forward =
        forward_step(out->Batch(), out->plan != nullptr ? *out->plan : kNoPlan);
    const double forwarded_at = now();
    {  // Counter deltas of this step (offloading strategies).
      kvcache::KvCounters counters = kv.Counters();
      step.h2d_bytes = counters.h2d_bytes - last_counters.h2d_bytes;
      step.kv_selected_tokens = counters.selected_tokens - last_counters.selected_tokens;
      step.kv_selections = counters.selections - last_counters.selections;
      step.mass_captured_sum = counters.mass_captured_sum - last_counters.mass_captured_sum;
      step.mass_samples = counters.mass_samples - last_counters.mass_samples;
      last_counters = std::move(counters);
    }
    step.forward_s = forwarded_at - scheduled_at;
    if (!forward.ok()) {
      result.steps.push_back(step);
      stop_early(absl::StrCat("engine failed: ", forward.status().message()));
      break;
    }
    std::vector<int32_t> sampled(out->seqs.size(), -1);
    for (size_t i = 0; i < out->seqs.size(); ++i) {
      if (!out->seqs[i].sample) continue;
      kernels::Argmax(forward->Row(forward->row_begin[i + 1] - 1), 1, forward->vocab_size,
                      &sampled[i]);
    }
    const double sampled_at = now();
    step.sample_s = sampled_at - forwarded_at;
    for (size_t i = 0; i < out->seqs.size(); ++i) {
      if (!out->seqs[i].sample) continue;
      RequestRecord& rec = result.requests[out->seqs[i].id];
      if (rec.first_token_s < 0) rec.first_token_s = sampled_at;
      rec.token_times_s.push_back(sampled_at);
    }
    for (const FinishedSeq& f : scheduler.Update(*out, sampled)) finish(f, sampled_at);
    result.steps.push_back(step);
    if (options.on_progress) {
      options.on_progress({finished_count + arrivals.abandoned(), total, now()});
    }
  }
  return result;
}

}  // namespace kvscope::engine
