#include "engine/generator.h"

#include <algorithm>
#include <atomic>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvscope::engine {
namespace {

// Sequence ids unique within the process, so that several Generate calls can share an engine.
std::atomic<int64_t> next_seq_id{1};

std::vector<float> CopyRow(const ForwardOutput& out, int64_t row) {
  return std::vector<float>(out.Row(row), out.Row(row) + out.vocab_size);
}

}  // namespace

absl::StatusOr<std::vector<GenerateResult>> Generate(Engine& engine,
                                                     absl::Span<const GenerateRequest> requests,
                                                     const GenerateOptions& options,
                                                     GenerateStats* stats) {
  const Clock& clock = options.clock != nullptr ? *options.clock : RealClock::Get();
  const int n = static_cast<int>(requests.size());
  for (int i = 0; i < n; ++i) {
    if (requests[i].prompt.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("request ", i, ": the prompt is empty"));
    }
    if (requests[i].max_new_tokens < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("request ", i, ": max_new_tokens must be >= 0"));
    }
    absl::Status s = ValidateSamplingParams(requests[i].sampling);
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("request ", i, ": ", s.message()));
  }
  std::vector<int64_t> seq_ids(n);
  for (int i = 0; i < n; ++i) seq_ids[i] = next_seq_id.fetch_add(1);
  // Frees every sequence however this function returns.
  struct ReleaseAll {
    Engine& engine;
    const std::vector<int64_t>& ids;
    ~ReleaseAll() {
      for (int64_t id : ids) engine.Release(id);
    }
  } release{engine, seq_ids};

  std::vector<GenerateResult> results(n);
  std::vector<Sampler> samplers;
  for (const GenerateRequest& r : requests) samplers.emplace_back(r.sampling);
  std::vector<bool> done(n, false);
  auto is_eos = [&](int32_t token) {
    return std::find(options.eos_ids.begin(), options.eos_ids.end(), token) !=
           options.eos_ids.end();
  };
  // Records the token chosen from `row` of `out` for request i.
  auto choose = [&](int i, const ForwardOutput& out, int64_t row) {
    const int32_t token = samplers[i].Next(out.Row(row), out.vocab_size);
    results[i].tokens.push_back(token);
    if (options.keep_logits) results[i].step_logits.push_back(CopyRow(out, row));
    if (options.on_token) options.on_token(i, token);
    if (static_cast<int32_t>(results[i].tokens.size()) >= requests[i].max_new_tokens ||
        is_eos(token)) {
      done[i] = true;
    }
  };

  // Prefill every prompt in one step.
  std::vector<SeqInput> batch;
  for (int i = 0; i < n; ++i) {
    batch.push_back({seq_ids[i], requests[i].prompt, 0, options.keep_logits});
    if (requests[i].max_new_tokens == 0) done[i] = true;
  }
  int64_t start = clock.NowNanos();
  KVSCOPE_ASSIGN_OR_RETURN(ForwardOutput out, engine.Forward(batch));
  for (int i = 0; i < n; ++i) {
    const int64_t last = out.row_begin[i + 1] - 1;
    if (options.keep_logits) {
      for (int64_t row = out.row_begin[i]; row <= last; ++row) {
        results[i].prefill_logits.push_back(CopyRow(out, row));
      }
    }
    if (!done[i]) choose(i, out, last);
  }
  if (stats != nullptr) {
    for (const GenerateRequest& r : requests) stats->prefill_tokens += r.prompt.size();
    stats->prefill_seconds += (clock.NowNanos() - start) * 1e-9;
  }

  // Decode: one token per unfinished request per step.
  start = clock.NowNanos();
  while (true) {
    batch.clear();
    std::vector<int> active;
    for (int i = 0; i < n; ++i) {
      if (done[i]) continue;
      const int32_t pos =
          static_cast<int32_t>(requests[i].prompt.size() + results[i].tokens.size() - 1);
      batch.push_back({seq_ids[i], absl::MakeConstSpan(&results[i].tokens.back(), 1), pos, false});
      active.push_back(i);
    }
    if (batch.empty()) break;
    KVSCOPE_ASSIGN_OR_RETURN(ForwardOutput step, engine.Forward(batch));
    for (size_t b = 0; b < active.size(); ++b) choose(active[b], step, step.row_begin[b]);
    if (stats != nullptr) stats->decode_tokens += active.size();
  }
  if (stats != nullptr) stats->decode_seconds += (clock.NowNanos() - start) * 1e-9;
  return results;
}

}  // namespace kvscope::engine
