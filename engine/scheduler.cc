#include "engine/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvscope::engine {

absl::Status ValidateSchedulerOptions(const SchedulerOptions& o) {
  if (o.max_num_seqs < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_num_seqs must be >= 1, got ", o.max_num_seqs));
  }
  if (o.max_num_batched_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_num_batched_tokens must be >= 1, got ",
                                                   o.max_num_batched_tokens));
  }
  if (o.max_model_len < 2) {
    return absl::InvalidArgumentError(absl::StrCat("max_model_len must be >= 2, got ", o.max_model_len));
  }
  if (!o.chunked_prefill && o.max_num_batched_tokens < o.max_model_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "without chunked prefill max_num_batched_tokens (", o.max_num_batched_tokens,
        ") must hold a whole prompt of max_model_len (", o.max_model_len, ") tokens"));
  }
  return absl::OkStatus();
}

std::vector<SeqInput> ScheduleOutput::Batch() const {
  std::vector<SeqInput> batch;
  batch.reserve(seqs.size());
  for (const ScheduledSeq& s : seqs) batch.push_back({s.id, s.tokens, s.start_position, false});
  return batch;
}

Scheduler::Scheduler(const SchedulerOptions& options, kvcache::KvManager& kv)
    : options_(options), kv_(kv) {}

void Scheduler::Add(SchedRequest request) {
  const int64_t id = request.id;
  auto seq = std::make_unique<Seq>();
  seq->tokens = request.prompt;
  seq->request = std::move(request);
  seqs_[id] = std::move(seq);
  waiting_.push_back(id);
}

const std::vector<int32_t>* Scheduler::Generated(int64_t id) const {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : &it->second->generated;
}

std::string Scheduler::NeverFits(const Seq& s) const {
  const int64_t prompt = static_cast<int64_t>(s.request.prompt.size());
  const int64_t total = prompt + s.request.max_new_tokens;
  if (prompt == 0) return "the prompt is empty";
  if (s.request.max_new_tokens < 1) return "max_new_tokens must be >= 1";
  if (total > options_.max_model_len) {
    return absl::StrCat("prompt of ", prompt, " tokens + ", s.request.max_new_tokens,
                        " output tokens exceeds max_model_len ", options_.max_model_len);
  }
  const int64_t peak = kv_.PeakTokens({s.request.id, s.request.prompt, s.request.max_new_tokens});
  if (peak > kv_.CapacityTokens()) {
    return absl::StrCat("needs KV for ", peak, " tokens but the ", kv_.name(),
                        " pool holds only ", kv_.CapacityTokens(), " (raise the KV memory budget)");
  }
  return "";
}

void Scheduler::Reject(int64_t id, std::string reason) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  kv_.Free(id);
  FinishedSeq f;
  f.id = id;
  f.completed = false;
  f.error = std::move(reason);
  f.output = it->second->generated;
  f.preemptions = it->second->preemptions;
  f.prefix_hit_tokens = it->second->prefix_hit_tokens;
  rejected_.push_back(std::move(f));
  seqs_.erase(it);
  running_.erase(std::remove(running_.begin(), running_.end(), id), running_.end());
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), id), waiting_.end());
  swapped_.erase(std::remove(swapped_.begin(), swapped_.end(), id), swapped_.end());
}

void Scheduler::Preempt(int64_t id, ScheduleOutput* out) {
  Seq& s = *seqs_.at(id);
  running_.erase(std::remove(running_.begin(), running_.end(), id), running_.end());
  ++s.preemptions;
  ++out->preemptions;
  if (kv_.SupportsSwap() && kv_.SwapOut(id)) {
    swapped_.push_back(id);
    return;
  }
  // Recompute: drop the KV; the prompt and the tokens generated so far are computed again.
  kv_.Free(id);
  s.num_computed = 0;
  waiting_.push_front(id);
}

absl::StatusOr<ScheduleOutput> Scheduler::Schedule() {
  ScheduleOutput out;
  int64_t budget = options_.max_num_batched_tokens;
  bool preempted = false;
  std::vector<kvcache::SeqStep> steps;

  auto schedule = [&](int64_t id, int32_t n) {
    Seq& s = *seqs_.at(id);
    const int32_t start = s.num_computed;
    const bool sample = start + n == static_cast<int32_t>(s.tokens.size());
    out.seqs.push_back({id, absl::MakeConstSpan(s.tokens.data() + start, n), start, sample});
    steps.push_back({id, n, start});
    if (n == 1 && !s.generated.empty() && sample) {
      ++out.decode_tokens;
    } else {
      out.prefill_tokens += n;
    }
    budget -= n;
  };
  // Tokens of `s` to compute this step, 0 if it must wait (no chunking and no room).
  auto chunk = [&](const Seq& s) -> int32_t {
    const int64_t remaining = static_cast<int64_t>(s.tokens.size()) - s.num_computed;
    const int64_t n = std::min(remaining, budget);
    if (!options_.chunked_prefill && n < remaining) return 0;
    return static_cast<int32_t>(n);
  };

  // 1. Running sequences, oldest first.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    const int64_t id = running_[i];
    Seq& s = *seqs_.at(id);
    const int32_t n = chunk(s);
    if (n == 0) {
      ++i;
      continue;
    }
    bool self_preempted = false;
    while (!kv_.Append(id, absl::MakeConstSpan(s.tokens.data() + s.num_computed, n))) {
      const int64_t victim = running_.back();
      preempted = true;
      if (victim == id) {
        if (running_.size() == 1) {
          // Nothing else holds device KV: it can never grow here.
          Reject(id, absl::StrCat("ran out of KV memory at ", s.num_computed + n,
                                  " tokens with no other sequence to preempt (the ", kv_.name(),
                                  " pool holds ", kv_.CapacityTokens(), " tokens)"));
        } else {
          Preempt(id, &out);
        }
        self_preempted = true;
        break;
      }
      Preempt(victim, &out);
    }
    if (self_preempted) continue;  // running_[i] is now the next sequence
    schedule(id, n);
    ++i;
  }

  // 2. Swapped sequences come back when nothing was preempted.
  if (!preempted) {
    while (!swapped_.empty() && running_.size() < static_cast<size_t>(options_.max_num_seqs)) {
      const int64_t id = swapped_.front();
      if (!kv_.CanSwapIn(id)) break;
      KVSCOPE_RETURN_IF_ERROR(kv_.SwapIn(id));
      swapped_.pop_front();
      running_.push_back(id);
      Seq& s = *seqs_.at(id);
      const int32_t n = budget > 0 ? chunk(s) : 0;
      if (n > 0 && kv_.Append(id, absl::MakeConstSpan(s.tokens.data() + s.num_computed, n))) {
        schedule(id, n);
      }
    }
  }

  // 3. Waiting sequences, first come first served.
  if (!preempted && swapped_.empty()) {
    while (!waiting_.empty() && budget > 0 &&
           running_.size() < static_cast<size_t>(options_.max_num_seqs)) {
      const int64_t id = waiting_.front();
      Seq& s = *seqs_.at(id);
      if (std::string reason = NeverFits(s); !reason.empty()) {
        Reject(id, std::move(reason));
        continue;
      }
      const kvcache::SeqRequest request{
          id, s.tokens,
          s.request.max_new_tokens - static_cast<int32_t>(s.generated.size())};
      const kvcache::Admission admission = kv_.CanAdmit(request);
      if (admission.status == kvcache::AdmitStatus::kNever) {
        Reject(id, admission.reason);
        continue;
      }
      if (admission.status == kvcache::AdmitStatus::kLater) break;
      KVSCOPE_ASSIGN_OR_RETURN(const int32_t cached, kv_.Admit(request));
      s.num_computed = cached;
      s.prefix_hit_tokens += cached;
      out.prefix_query_tokens += static_cast<int64_t>(s.tokens.size());
      out.prefix_hit_tokens += cached;
      const int32_t n = chunk(s);
      if (n == 0 || !kv_.Append(id, absl::MakeConstSpan(s.tokens.data() + s.num_computed, n))) {
        kv_.Free(id);
        s.num_computed = 0;
        break;
      }
      waiting_.pop_front();
      running_.push_back(id);
      schedule(id, n);
    }
  }

  KVSCOPE_ASSIGN_OR_RETURN(out.plan, kv_.Plan(steps));
  return out;
}

std::vector<FinishedSeq> Scheduler::Update(const ScheduleOutput& output,
                                           absl::Span<const int32_t> sampled) {
  std::vector<FinishedSeq> finished = std::move(rejected_);
  rejected_.clear();
  for (size_t i = 0; i < output.seqs.size(); ++i) {
    const ScheduledSeq& step = output.seqs[i];
    auto it = seqs_.find(step.id);
    if (it == seqs_.end()) continue;
    Seq& s = *it->second;
    s.num_computed = step.start_position + static_cast<int32_t>(step.tokens.size());
    if (!step.sample) continue;
    const int32_t token = sampled[i];
    s.tokens.push_back(token);
    s.generated.push_back(token);
    const bool eos = std::find(s.request.eos_ids.begin(), s.request.eos_ids.end(), token) !=
                     s.request.eos_ids.end();
    if (eos || static_cast<int32_t>(s.generated.size()) >= s.request.max_new_tokens) {
      kv_.Free(step.id);
      running_.erase(std::remove(running_.begin(), running_.end(), step.id), running_.end());
      FinishedSeq f;
      f.id = step.id;
      f.completed = true;
      f.output = std::move(s.generated);
      f.preemptions = s.preemptions;
      f.prefix_hit_tokens = s.prefix_hit_tokens;
      finished.push_back(std::move(f));
      seqs_.erase(it);
    }
  }
  return finished;
}

}  // namespace kvscope::engine
