// File: kernels/cuda/rope.h
//
// CUDA rotary position embedding with the exact semantics of kernels::Rope (kernels/ops.h):
// "rotate half" layout, positions per token, a frequency table, partial rotation.
//
// The rope types (default, linear, llama3, ...) differ only in the frequency table and the
// cos/sin scale: the engine computes inv_freq with engine::RopeInvFreq (float64, rounded to
// float32, as transformers) and passes attention_scaling from the same call. So one kernel
// serves every type.
//
// Precision contract (that of kernels/cpu/rope.cc, so float32 results match the CPU to the
// last bit or so): angle = float(position) * inv_freq[i] as one float32 multiply;
// c = float(cos(double(angle))) * attention_scaling, s likewise with sin (double-precision
// cos/sin on the device, once per token and frequency, shared by all heads); the rotation is
// computed in double from the widened element and rounded once to dtype. (FP64 is cheap on
// A100/H100; on cards with slow FP64 this still costs only per-token trigonometry.)
#ifndef KVSCOPE_KERNELS_CUDA_ROPE_H_
#define KVSCOPE_KERNELS_CUDA_ROPE_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "common/dtype.h"

namespace kvscope::kernels::cuda {

// Largest rot_dim supported (the cos/sin of one token live in shared memory).
inline constexpr int64_t kMaxRopeRotDim = 4096;

// Rotates x in place: for each token t, head h and i < rot_dim/2, the pair
// (x[i], x[i + rot_dim/2]) of head h is rotated by angle positions[t] * inv_freq[i] and scaled
// by attention_scaling; dimensions >= rot_dim are untouched.
//   x:         [tokens, heads, head_dim] stored as dtype, row stride token_stride ELEMENTS
//              between tokens (>= heads * head_dim; e.g. the q or k part of a fused qkv row)
//   positions: [tokens] int32, device
//   inv_freq:  [rot_dim / 2] float32, device
// InvalidArgument without a launch for negative sizes, an odd rot_dim, rot_dim > head_dim or
// > kMaxRopeRotDim, token_stride < heads * head_dim, or null pointers with work to do.
// Asynchronous on `stream`; thread-compatible.
absl::Status Rope(void* x, int64_t tokens, int64_t heads, int64_t head_dim,
                  int64_t token_stride, const int32_t* positions, const float* inv_freq,
                  int64_t rot_dim, float attention_scaling, DType dtype, cudaStream_t stream);

}  // namespace kvscope::kernels::cuda

#endif  // KVSCOPE_KERNELS_CUDA_ROPE_H_
