// File: kernels/cuda/sampling.h
//
// Token selection on the device: Argmax and SampleTokens, batched over rows of logits, with
// the choices of the CPU reference (kernels/ops.h Argmax and SampleToken): given the same
// logits, parameters and u, the same token, tie rules and interval layout included.
//
// How the device reproduces SampleToken (one thread block per row):
//   - Rank order: descending logit, lower token id first on ties; NaN ranks as -inf; -0 and +0
//     are equal. Argmax is the first token in rank order (a row of only NaN/-inf gives the
//     lowest index of the maximal rank key, as the CPU).
//   - temperature <= 0 (or NaN): greedy (Argmax). The top token's logit +inf (or the row all
//     NaN/-inf): that token, as the CPU.
//   - top-k: a radix select over the 32-bit order-preserving key of the logit finds the k-th
//     token in rank order exactly (ties at the boundary resolved by token id).
//   - p_i = exp(double(l_i) / double(temperature) - double(l_top) / double(temperature)) in
//     float64, as the CPU (NaN -> 0).
//   - Masses are summed EXACTLY: each p_i is converted to a 128-bit fixed-point integer
//     (2^-80 units, truncated; a nonzero p_i below 2^-80 counts as one unit so that "p > 0"
//     is preserved) and sums are integer sums, so every sum is independent of the order of
//     summation and of the thread schedule: the result is deterministic.
//   - top-p: a radix descent over the same key with per-bin mass finds the smallest rank-order
//     prefix whose mass reaches top_p * total (all candidates if none does, at least one).
//   - The kept tokens' intervals are laid out in ascending token id; the token whose interval
//     contains u * total is chosen (u <= 0 or NaN: as 0; u >= 1: the last kept token with
//     p > 0).
//
// Residual differences from the CPU, all at exact interval or cut boundaries: the CPU sums
// float64 masses sequentially (relative rounding error up to ~vocab * 2^-53) while the device
// sums them exactly (truncation below 2^-80 per token), and CUDA's float64 exp may differ
// from the host libm's in the last bit. So when u * total, or top_p * total, lies within
// ~1e-12 (relative) of a cumulative-mass boundary, the two may choose neighbouring tokens (or
// a top-p cut one token apart). For u drawn uniformly this has probability ~1e-11 per draw.
//
// Cost: one block per row; several passes over the row (argmax 1, top-k 5, top-p 5, the
// interval scan 1), logits read through L2. vocab up to 2^31 - 1.
// TODO(issue 6): split long rows over several blocks for batch-1 latency; measure on the H100.
#ifndef KVSCOPE_KERNELS_CUDA_SAMPLING_H_
#define KVSCOPE_KERNELS_CUDA_SAMPLING_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"

namespace kvscope::kernels::cuda {

// One row's sampling parameters (plain data, uploaded [rows] to the device). The meaning is
// that of kernels::SampleToken: temperature <= 0 means greedy; top_k <= 0 means all; top_p
// >= 1 means all.
struct SamplingParams {
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
};

// ids[r] = argmax over logits[r, :] (lowest index on ties; NaN ignored; all NaN gives 0).
//   logits: [rows, vocab] stored as dtype; ids: [rows] int32. All device pointers.
// InvalidArgument without a launch for rows < 0, vocab < 1 or > 2^31 - 1, null pointers with
// rows > 0, or an unsupported dtype. Asynchronous on `stream`; thread-compatible.
absl::Status Argmax(const void* logits, int64_t rows, int64_t vocab, int32_t* ids, DType dtype,
                    cudaStream_t stream);

// ids[r] = kernels::SampleToken(logits[r, :], vocab, params[r].temperature, params[r].top_k,
//                               params[r].top_p, u[r]) up to the boundary cases above.
//   logits: [rows, vocab] stored as dtype; params: [rows]; u: [rows] float64 in [0, 1)
//   (from the caller's seeded generator); ids: [rows] int32. All device pointers.
// Arguments are checked as for Argmax. Asynchronous on `stream`; thread-compatible.
absl::Status SampleTokens(const void* logits, int64_t rows, int64_t vocab,
                          const SamplingParams* params, const double* u, int32_t* ids,
                          DType dtype, cudaStream_t stream);

}  // namespace kvscope::kernels::cuda

#endif  // KVSCOPE_KERNELS_CUDA_SAMPLING_H_
