// StreamingLLM decisions and sink-key re-rotation (streaming_ops.h).
#include "kernels/cuda/streaming_ops.h"

#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dispatch.h"
#include "kernels/cuda/select_util.cuh"

namespace kvscope::kernels::cuda {
namespace {

// One block per (i, h).
__global__ void StreamingVictimsKernel(EntryLists e, EvictStep step, int32_t* victims) {
  __shared__ SelectScratch scratch;
  const int i = blockIdx.x / e.num_kv_heads;
  const int h = blockIdx.x % e.num_kv_heads;
  const int32_t n = step.view_n[i];
  const int32_t sinks = step.total[i] - step.recent[i];
  const int32_t* pos = e.positions + e.head_offset[i] + static_cast<int64_t>(h) * e.head_stride[i];
  // Oldest non-sink: smallest position >= sinks (ties: first entry).
  int victim = BlockArgMinKey(
      n,
      [&](int j, Key96* key) {
        if (pos[j] < sinks) return false;
        *key = Key96{static_cast<unsigned long long>(static_cast<uint32_t>(pos[j]) ^ 0x80000000u),
                     0u};
        return true;
      },
      scratch);
  if (victim < 0) {
    // Only sinks (recent = 0): the newest, i.e. the smallest key ~position.
    victim = BlockArgMinKey(
        n,
        [&](int j, Key96* key) {
          *key = Key96{static_cast<unsigned long long>(
                           ~(static_cast<uint32_t>(pos[j]) ^ 0x80000000u)),
                       0u};
          return true;
        },
        scratch);
  }
  if (threadIdx.x == 0) victims[blockIdx.x] = victim;
}

__global__ void StreamingSelectKeepKernel(EntryLists e, EvictStep step, int32_t* keep,
                                          int32_t keep_stride, int32_t* keep_count) {
  __shared__ SelectScratch scratch;
  const int i = blockIdx.x / e.num_kv_heads;
  const int h = blockIdx.x % e.num_kv_heads;
  const int32_t n = step.view_n[i];
  const int32_t sinks = step.total[i] - step.recent[i];
  const int32_t window_start = step.length[i] - step.recent[i];
  const int32_t* pos = e.positions + e.head_offset[i] + static_cast<int64_t>(h) * e.head_stride[i];
  int32_t* out = keep + static_cast<int64_t>(blockIdx.x) * keep_stride;
  const int count = BlockCompactAscending(
      n, [&](int j) { return pos[j] < sinks || pos[j] >= window_start; }, out, keep_stride,
      scratch);
  if (threadIdx.x == 0) keep_count[blockIdx.x] = count;
}

// Grid: x over (i, h) pairs; threads over (entry, frequency) of that pair.
template <typename T>
__global__ void ShiftSinkKeysKernel(T* k, int32_t kv_heads, int32_t block_size,
                                    int32_t head_dim, EntryLists e, const int32_t* held,
                                    const int32_t* shift_below, const int32_t* evicted,
                                    const float* inv_freq, int32_t rot_half) {
  const int i = blockIdx.x / e.num_kv_heads;
  const int h = blockIdx.x % e.num_kv_heads;
  const int32_t delta = evicted[blockIdx.x];
  if (delta <= 0) return;
  const int32_t below = shift_below[i];
  const int64_t base = e.head_offset[i] + static_cast<int64_t>(h) * e.head_stride[i];
  const int64_t work = static_cast<int64_t>(held[i]) * rot_half;
  for (int64_t x = threadIdx.x; x < work; x += blockDim.x) {
    const int32_t j = static_cast<int32_t>(x / rot_half);
    const int32_t f = static_cast<int32_t>(x % rot_half);
    if (e.positions[base + j] >= below) continue;
    const int64_t slot = e.slots[base + j];
    T* row = k + ((slot / block_size) * kv_heads + h) * static_cast<int64_t>(block_size) *
                     head_dim +
             (slot % block_size) * static_cast<int64_t>(head_dim);
    // NOTE: the CPU computes in double without FMA contraction; the explicit _rn
    // intrinsics keep nvcc from fusing, so the rotation differs from the CPU's only through
    // the (<= 1 ulp, double) cos/sin of the device math library.
    const double angle = __dmul_rn(static_cast<double>(delta), static_cast<double>(inv_freq[f]));
    double s, c;
    sincos(angle, &s, &c);
    const double a = Load(row[f]), b = Load(row[f + rot_half]);
    const float x0 = static_cast<float>(__dsub_rn(__dmul_rn(a, c), __dmul_rn(b, s)));
    const float x1 = static_cast<float>(__dadd_rn(__dmul_rn(b, c), __dmul_rn(a, s)));
    row[f] = Store<T>(x0);
    row[f + rot_half] = Store<T>(x1);
  }
}

absl::Status CheckStep(const EvictStep& step, bool need_length, const char* what) {
  if (step.view_n == nullptr || step.total == nullptr || step.recent == nullptr ||
      (need_length && step.length == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": null view_n, length, total or recent"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status StreamingVictims(const EntryLists& entries, const EvictStep& step,
                              int32_t* victims, cudaStream_t stream) {
  if (absl::Status st = ValidateEntryLists(entries, false, "StreamingVictims"); !st.ok()) {
    return st;
  }
  if (absl::Status st = CheckStep(step, false, "StreamingVictims"); !st.ok()) return st;
  if (victims == nullptr) return absl::InvalidArgumentError("StreamingVictims: null victims");
  const int blocks = entries.num_seqs * entries.num_kv_heads;
  if (blocks == 0) return absl::OkStatus();
  StreamingVictimsKernel<<<blocks, kSelectThreads, 0, stream>>>(entries, step, victims);
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status StreamingSelectKeep(const EntryLists& entries, const EvictStep& step, int32_t* keep,
                                 int32_t keep_stride, int32_t* keep_count, cudaStream_t stream) {
  if (absl::Status st = ValidateEntryLists(entries, false, "StreamingSelectKeep"); !st.ok()) {
    return st;
  }
  if (absl::Status st = CheckStep(step, true, "StreamingSelectKeep"); !st.ok()) return st;
  if (keep == nullptr || keep_count == nullptr || keep_stride < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "StreamingSelectKeep: null keep or keep_count, or keep_stride ", keep_stride));
  }
  const int blocks = entries.num_seqs * entries.num_kv_heads;
  if (blocks == 0) return absl::OkStatus();
  StreamingSelectKeepKernel<<<blocks, kSelectThreads, 0, stream>>>(entries, step, keep,
                                                                   keep_stride, keep_count);
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status ShiftSinkKeys(const CudaKvPool& pool, const EntryLists& entries, const int32_t* held,
                           const int32_t* shift_below, const int32_t* evicted,
                           const float* inv_freq, int32_t rot_half, cudaStream_t stream) {
  if (absl::Status st = ValidateEntryLists(entries, false, "ShiftSinkKeys"); !st.ok()) return st;
  if (absl::Status st = CheckCudaKvPool(pool, "ShiftSinkKeys"); !st.ok()) return st;
  if (pool.num_kv_heads != entries.num_kv_heads) {
    return absl::InvalidArgumentError("ShiftSinkKeys: pool and entry lists differ in KV heads");
  }
  if (held == nullptr || shift_below == nullptr || evicted == nullptr || inv_freq == nullptr) {
    return absl::InvalidArgumentError(
        "ShiftSinkKeys: null held, shift_below, evicted or inv_freq");
  }
  if (rot_half < 1 || 2 * rot_half > pool.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("ShiftSinkKeys: rot_half ", rot_half,
                                                   " does not fit head_dim ", pool.head_dim));
  }
  const int blocks = entries.num_seqs * entries.num_kv_heads;
  if (blocks == 0) return absl::OkStatus();
  return DispatchDType(pool.dtype, [&](auto tag) -> absl::Status {
    using T = typename decltype(tag)::type;
    ShiftSinkKeysKernel<T><<<blocks, 128, 0, stream>>>(
        static_cast<T*>(pool.k), pool.num_kv_heads, pool.block_size, pool.head_dim, entries,
        held, shift_below, evicted, inv_freq, rot_half);
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return absl::OkStatus();
  });
}

}  // namespace kvscope::kernels::cuda
