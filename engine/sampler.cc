#include "engine/sampler.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"

namespace kvscope::engine {

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be a finite number >= 0, got ", p.temperature));
  }
  if (p.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0 (0 = off), got ", p.top_k));
  }
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", p.top_p));
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

int32_t Sampler::Next(const float* logits, int64_t vocab) {
  if (params_.temperature <= 0.0f) {
    int32_t id;
    kernels::Argmax(logits, 1, vocab, &id);
    return id;
  }
  // 53 random bits -> a double in [0, 1).
  const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
  return kernels::SampleToken(logits, vocab, params_.temperature, params_.top_k, params_.top_p, u);
}

}  // namespace kvscope::engine
