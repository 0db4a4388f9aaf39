// File: kernels/cuda/elementwise.h
//
// CUDA versions of the elementwise ops of kernels/ops.h (Embedding, SiluMul, Relu,
// AddInPlace, AddBias) plus AddBiasResidual, the residual add of a layer whose output
// projection has a bias.
//
// Conventions shared by every function here:
//   - Pointers are device pointers. Elements are stored as `dtype` (common/dtype.h: kF32,
//     kF16, kBF16); every buffer of one call has the same dtype. Arithmetic is float32: each
//     element is widened, computed and rounded once (round to nearest even) on store.
//   - Shapes and strides are in elements. Negative sizes, strides below the row length or a
//     null pointer with a nonempty shape give InvalidArgument before anything is launched.
//     Empty shapes launch nothing and return OK.
//   - Launches are asynchronous on `stream`; nothing synchronizes. The Status reports
//     argument errors and launch errors (cudaGetLastError); faults during execution surface
//     at the caller's next synchronization.
//   - Thread-compatible: no state; concurrent calls on disjoint buffers are safe.
#ifndef KVSCOPE_KERNELS_CUDA_ELEMENTWISE_H_
#define KVSCOPE_KERNELS_CUDA_ELEMENTWISE_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"

namespace kvscope::kernels::cuda {

// out[i, :] = table[ids[i], :]; a bit-exact row copy.
//   table: [vocab, hidden]; ids: [n] int32 on the device; out: [n, hidden].
// The ids live on the device, so they cannot be checked before the launch. Contract for an
// id outside [0, vocab): the kernel never reads outside the table; it writes zeros to that
// output row and, when `error_word` is not null, records the lowest such position and its id
// in *error_word (one device uint64, which the caller zeroes before the launch, e.g. with
// cudaMemsetAsync; one word can collect the errors of several launches). After
// synchronizing, the caller copies the word to the host and turns it into a Status with
// EmbeddingErrorToStatus. n must be < 2^31 (positions are int32).
absl::Status Embedding(const void* table, int64_t vocab, int64_t hidden, const int32_t* ids,
                       int64_t n, void* out, DType dtype, uint64_t* error_word,
                       cudaStream_t stream);

// OK when `error_word` (the host copy of Embedding's error word) is 0; otherwise
// InvalidArgument naming the lowest bad position and its id, in the words of the CPU
// Embedding ("token id 7 at position 3 is outside [0, vocab)").
absl::Status EmbeddingErrorToStatus(uint64_t error_word, int64_t vocab);

// out[r, c] = silu(gate[r, c]) * up[r, c], silu(x) = x / (1 + exp(-x)).
//   gate, up, out: [rows, cols] with row strides gate_stride, up_stride, out_stride >= cols
//   (so the halves of a fused [rows, 2*cols] gate|up buffer can be passed as two views).
// In place on gate or up allowed (same pointer and stride); other overlaps are not.
absl::Status SiluMul(const void* gate, int64_t gate_stride, const void* up, int64_t up_stride,
                     int64_t rows, int64_t cols, void* out, int64_t out_stride, DType dtype,
                     cudaStream_t stream);

// x = max(x, 0) in place (NaN stays NaN, as torch.relu). x: [n].
absl::Status Relu(void* x, int64_t n, DType dtype, cudaStream_t stream);

// y += x. x, y: [n]; x == y allowed.
absl::Status AddInPlace(void* y, const void* x, int64_t n, DType dtype, cudaStream_t stream);

// x[r, :] += bias for every row. x: [rows, cols]; bias: [cols].
absl::Status AddBias(void* x, const void* bias, int64_t rows, int64_t cols, DType dtype,
                     cudaStream_t stream);

// residual[r, :] += x[r, :] + bias (bias may be null: residual += x), computed in float32 and
// rounded once. residual, x: [rows, cols]; bias: [cols]. residual must not alias x.
absl::Status AddBiasResidual(void* residual, const void* x, const void* bias, int64_t rows,
                             int64_t cols, DType dtype, cudaStream_t stream);

}  // namespace kvscope::kernels::cuda

#endif  // KVSCOPE_KERNELS_CUDA_ELEMENTWISE_H_
