// File: engine/sampler.h
//
// Per-request token selection: greedy, or temperature / top-k / top-p sampling driven by the
// request's own seeded generator (std::mt19937_64, whose output is fixed by the C++
// standard), so a seed gives the same tokens whatever the batch it runs in.
#ifndef KVSCOPE_ENGINE_SAMPLER_H_
#define KVSCOPE_ENGINE_SAMPLER_H_

#include <cstdint>
#include <random>

#include "absl/status/status.h"

namespace kvscope::engine {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy
  int32_t top_k = 0;         // 0 = no limit
  float top_p = 1.0f;        // 1 = no limit
  uint64_t seed = 0;
};

// InvalidArgument naming the field: temperature < 0 or not finite, top_k < 0,
// top_p outside (0, 1].
absl::Status ValidateSamplingParams(const SamplingParams& params);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // Picks the next token from logits [vocab]. Consumes one random number per call when
  // sampling (none when greedy).
  int32_t Next(const float* logits, int64_t vocab);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_SAMPLER_H_
