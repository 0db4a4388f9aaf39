// File: engine/generator.h
//
// Generation for a fixed set of prompts: one batched prefill, then batched decode steps
// until each request has its tokens (or, unless ignored, an end-of-sequence token). The
// continuous-batching scheduler for request streams lives elsewhere; this is the simple
// loop behind `kvscope generate` and the correctness tests.
#ifndef KVSCOPE_ENGINE_GENERATOR_H_
#define KVSCOPE_ENGINE_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/clock.h"
#include "engine/engine.h"
#include "engine/sampler.h"

namespace kvscope::engine {

struct GenerateRequest {
  std::vector<int32_t> prompt;
  int32_t max_new_tokens = 16;
  SamplingParams sampling;
};

struct GenerateOptions {
  // Keep the logits of every prompt position and of every generated token.
  bool keep_logits = false;
  // Stop a request at any of these tokens (the token is kept). Empty: never stop early.
  std::vector<int32_t> eos_ids;
  // Called after each token is chosen (request index, token).
  std::function<void(int request, int32_t token)> on_token;
  const Clock* clock = nullptr;  // null = RealClock
};

struct GenerateResult {
  std::vector<int32_t> tokens;                   // generated tokens
  std::vector<std::vector<float>> prefill_logits;  // [prompt_len][vocab] if keep_logits
  std::vector<std::vector<float>> step_logits;     // [tokens][vocab]: what each token was chosen from
};

struct GenerateStats {
  int64_t prefill_tokens = 0;
  int64_t decode_tokens = 0;  // tokens produced by decode steps (excludes the prefill's token)
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

// InvalidArgument for an empty prompt or bad sampling parameters (naming the request);
// errors from the engine (ids outside the vocabulary, context overflow) pass through.
absl::StatusOr<std::vector<GenerateResult>> Generate(Engine& engine,
                                                     absl::Span<const GenerateRequest> requests,
                                                     const GenerateOptions& options,
                                                     GenerateStats* stats = nullptr);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_GENERATOR_H_
