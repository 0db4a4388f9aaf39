// File: kernels/cuda/rope.cu
//
// Kernel and launcher for kernels/cuda/rope.h. One block per token (grid-stride): the block
// first computes the token's cos/sin table [rot_dim/2] into shared memory (double trig, see
// the header's precision contract), then rotates every (head, i) pair of the token.
#include "kernels/cuda/rope.h"

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dispatch.h"

namespace kvscope::kernels::cuda {
namespace {

constexpr int kThreads = 128;

// Dynamic shared memory: cos[half], then sin[half] (float32, already scaled).
template <typename T>
__global__ void RopeKernel(T* x, int64_t tokens, int64_t heads, int64_t head_dim,
                           int64_t token_stride, const int32_t* __restrict__ positions,
                           const float* __restrict__ inv_freq, int64_t half, float scaling) {
  extern __shared__ float cs[];
  float* cos_t = cs;
  float* sin_t = cs + half;
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const float pos = static_cast<float>(positions[t]);
    __syncthreads();  // the previous token's readers are done with cos_t / sin_t
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
      // __fmul_rn: one rounded float32 multiply, as the CPU (never contracted into an FMA).
      const double angle = static_cast<double>(__fmul_rn(pos, inv_freq[i]));
      double s, c;
      sincos(angle, &s, &c);
      cos_t[i] = __fmul_rn(static_cast<float>(c), scaling);
      sin_t[i] = __fmul_rn(static_cast<float>(s), scaling);
    }
    __syncthreads();
    T* xt = x + t * token_stride;
    const int64_t pairs = heads * half;
    for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
      const int64_t h = p / half;
      const int64_t i = p - h * half;
      T* xh = xt + h * head_dim;
      const double a = Load(xh[i]);
      const double b = Load(xh[i + half]);
      const double c = cos_t[i];
      const double s = sin_t[i];
      // a * c and b * s are exact in double; one rounding for the difference (no FMA
      // needed or wanted: __dmul_rn/__dadd_rn keep the CPU's operation order).
      xh[i] = Store<T>(static_cast<float>(__dsub_rn(__dmul_rn(a, c), __dmul_rn(b, s))));
      xh[i + half] = Store<T>(static_cast<float>(__dadd_rn(__dmul_rn(b, c), __dmul_rn(a, s))));
    }
  }
}

}  // namespace

absl::Status Rope(void* x, int64_t tokens, int64_t heads, int64_t head_dim,
                  int64_t token_stride, const int32_t* positions, const float* inv_freq,
                  int64_t rot_dim, float attention_scaling, DType dtype, cudaStream_t stream) {
  if (tokens < 0 || heads < 0 || head_dim < 0 || rot_dim < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Rope: negative size (tokens ", tokens, ", heads ", heads, ", head_dim ",
                     head_dim, ", rot_dim ", rot_dim, ")"));
  }
  if (rot_dim % 2 != 0 || rot_dim > head_dim || rot_dim > kMaxRopeRotDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("Rope: rot_dim ", rot_dim, " must be even and <= head_dim ", head_dim,
                     " and <= ", kMaxRopeRotDim));
  }
  if (token_stride < heads * head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("Rope: token_stride ", token_stride,
                                                   " < heads * head_dim ", heads * head_dim));
  }
  const int64_t half = rot_dim / 2;
  if (tokens == 0 || heads == 0 || half == 0) {
    return DispatchDType(dtype, [](auto) { return absl::OkStatus(); });
  }
  if (x == nullptr || positions == nullptr || inv_freq == nullptr) {
    return absl::InvalidArgumentError("Rope: null x, positions or inv_freq");
  }
  const unsigned blocks = static_cast<unsigned>(tokens < (1LL << 30) ? tokens : (1LL << 30));
  const size_t smem = static_cast<size_t>(2 * half) * sizeof(float);  // <= 16 KiB
  return DispatchDType(dtype, [&](auto tag) -> absl::Status {
    using T = typename decltype(tag)::type;
    RopeKernel<T><<<blocks, kThreads, smem, stream>>>(static_cast<T*>(x), tokens, heads,
                                                      head_dim, token_stride, positions,
                                                      inv_freq, half, attention_scaling);
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return absl::OkStatus();
  });
}

}  // namespace kvscope::kernels::cuda
