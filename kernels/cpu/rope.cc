// File: kernels/cpu/rope.cc
//
// CPU reference implementation of Rope (kernels/ops.h), HF "rotate_half" layout.
//
// Precision contract, chosen to match PyTorch float32 (HF computes
// freqs = position_f32 * inv_freq_f32 in float32, then cos/sin in float32, then scales them):
//   angle = float(position) * inv_freq[i]            (one float32 multiply, rounded)
//   c     = float(cos(double(angle))) * attention_scaling   (cos correctly rounded to float,
//   s     = float(sin(double(angle))) * attention_scaling    then a float32 multiply)
//   x'    = float(double(x) * c - double(y) * s),  y' = float(double(y) * c + double(x) * s)
// The float32 angle matters: at position ~30k the float32 rounding of the angle is ~1e-3 rad,
// far above the tolerance, so computing the angle in double would NOT match transformers.
#include <cassert>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/ops.h"

namespace kvscope::kernels {
namespace {

constexpr int64_t kParallelMinElements = int64_t{1} << 13;

}  // namespace

void Rope(float* x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t token_stride,
          const int32_t* positions, const float* inv_freq, int64_t rot_dim,
          float attention_scaling) {
  assert(tokens >= 0 && heads >= 0 && head_dim >= 0);
  assert(rot_dim >= 0 && rot_dim <= head_dim && rot_dim % 2 == 0);
  assert(token_stride >= heads * head_dim);
  const int64_t half = rot_dim / 2;
  if (half == 0) return;
#pragma omp parallel if (tokens > 1 && tokens * heads * rot_dim >= kParallelMinElements)
  {
    // cos/sin of one token, shared by all its heads.
    std::vector<float> cos_t(half);
    std::vector<float> sin_t(half);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      const float pos = static_cast<float>(positions[t]);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = pos * inv_freq[i];
        cos_t[i] = static_cast<float>(std::cos(static_cast<double>(angle))) * attention_scaling;
        sin_t[i] = static_cast<float>(std::sin(static_cast<double>(angle))) * attention_scaling;
      }
      for (int64_t h = 0; h < heads; ++h) {
        float* xh = x + t * token_stride + h * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const double a = xh[i];
          const double b = xh[i + half];
          const double c = cos_t[i];
          const double s = sin_t[i];
          xh[i] = static_cast<float>(a * c - b * s);
          xh[i + half] = static_cast<float>(b * c + a * s);
        }
      }
    }
  }
}

}  // namespace kvscope::kernels
