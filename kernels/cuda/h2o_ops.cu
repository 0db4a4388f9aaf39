// H2O score accumulation and eviction decisions (h2o_ops.h).
#include "kernels/cuda/h2o_ops.h"

#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/select_util.cuh"

namespace kvscope::kernels::cuda {
namespace {

constexpr int kAccumulateThreads = 256;

// blockIdx.x: the (i, h) pair; blockIdx.y * blockDim.x + threadIdx.x (grid-stride): entry j.
__global__ void AccumulateH2oScoresKernel(const float* mass, int32_t num_heads,
                                          int64_t mass_stride, EntryLists e,
                                          const int32_t* view_n) {
  const int i = blockIdx.x / e.num_kv_heads;
  const int h = blockIdx.x % e.num_kv_heads;
  const int group = num_heads / e.num_kv_heads;
  const int32_t n = view_n[i];
  double* score = e.scores + e.head_offset[i] + static_cast<int64_t>(h) * e.head_stride[i];
  const float* m = mass + (static_cast<int64_t>(i) * num_heads + h * group) * mass_stride;
  for (int j = blockIdx.y * blockDim.x + threadIdx.x; j < n; j += gridDim.y * blockDim.x) {
    double s = score[j];
    for (int q = 0; q < group; ++q) s = __dadd_rn(s, static_cast<double>(m[q * mass_stride + j]));
    score[j] = s;
  }
}

__device__ __forceinline__ unsigned OrderedPosition(int32_t p) {
  return static_cast<uint32_t>(p) ^ 0x80000000u;  // signed order as unsigned
}

__global__ void H2oVictimsKernel(EntryLists e, EvictStep step, int32_t* victims) {
  __shared__ SelectScratch scratch;
  const int i = blockIdx.x / e.num_kv_heads;
  const int h = blockIdx.x % e.num_kv_heads;
  const int32_t n = step.view_n[i];
  const int32_t window_start = step.length[i] - step.recent[i];
  const int64_t base = e.head_offset[i] + static_cast<int64_t>(h) * e.head_stride[i];
  const int32_t* pos = e.positions + base;
  const double* score = e.scores + base;
  // Better victim = smaller (score, position).
  int victim = BlockArgMinKey(
      n,
      [&](int j, Key96* key) {
        if (pos[j] >= window_start) return false;
        *key = Key96{OrderedKey(score[j]), OrderedPosition(pos[j])};
        return true;
      },
      scratch);
  if (victim < 0) {
    victim = BlockArgMinKey(
        n,
        [&](int j, Key96* key) {
          *key = Key96{OrderedKey(score[j]), OrderedPosition(pos[j])};
          return true;
        },
        scratch);
  }
  if (threadIdx.x == 0) victims[blockIdx.x] = victim;
}

__global__ void H2oSelectKeepKernel(EntryLists e, EvictStep step, int32_t* keep,
                                    int32_t keep_stride, int32_t* keep_count) {
  __shared__ SelectScratch scratch;
  const int i = blockIdx.x / e.num_kv_heads;
  const int h = blockIdx.x % e.num_kv_heads;
  const int32_t n = step.view_n[i];
  const int32_t total = step.total[i];
  const int32_t window_start = step.length[i] - step.recent[i];
  const int64_t base = e.head_offset[i] + static_cast<int64_t>(h) * e.head_stride[i];
  const int32_t* pos = e.positions + base;
  const double* score = e.scores + base;
  const int window = BlockCount(n, [&](int j) { return pos[j] >= window_start; });
  const int old = n - window;
  const int heavy = min(total - min(window, total), old);
  // Better keep = larger (score, -position): the key of the k-th best old entry is the
  // threshold; with distinct positions exactly `heavy` old entries reach it.
  Key96 threshold{~0ULL, ~0u};
  const auto old_key = [&](int j, Key96* key) {
    if (pos[j] >= window_start) return false;
    *key = Key96{OrderedKey(score[j]), ~OrderedPosition(pos[j])};
    return true;
  };
  if (heavy > 0) threshold = BlockSelectKthLargest(n, heavy, old_key, scratch);
  int32_t* out = keep + static_cast<int64_t>(blockIdx.x) * keep_stride;
  const int count = BlockCompactAscending(
      n,
      [&](int j) {
        Key96 key;
        if (!old_key(j, &key)) return true;  // in the window
        return heavy > 0 && KeyGreaterEq(key, threshold);
      },
      out, keep_stride, scratch);
  if (threadIdx.x == 0) keep_count[blockIdx.x] = count;
}

absl::Status CheckStep(const EvictStep& step, bool need_total, const char* what) {
  if (step.view_n == nullptr || step.length == nullptr || step.recent == nullptr ||
      (need_total && step.total == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": null view_n, length, total or recent"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status AccumulateH2oScores(const float* mass, int32_t num_heads, int64_t mass_stride,
                                 const EntryLists& entries, const int32_t* view_n,
                                 cudaStream_t stream) {
  if (absl::Status st = ValidateEntryLists(entries, true, "AccumulateH2oScores"); !st.ok()) {
    return st;
  }
  if (mass == nullptr || view_n == nullptr) {
    return absl::InvalidArgumentError("AccumulateH2oScores: null mass or view_n");
  }
  if (num_heads < 1 || num_heads % entries.num_kv_heads != 0 || mass_stride < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AccumulateH2oScores: num_heads ", num_heads, " is not a positive multiple of ",
        entries.num_kv_heads, " KV heads, or mass_stride ", mass_stride, " < 1"));
  }
  const int pairs = entries.num_seqs * entries.num_kv_heads;
  if (pairs == 0) return absl::OkStatus();
  const long long chunks = (mass_stride + kAccumulateThreads - 1) / kAccumulateThreads;
  const dim3 grid(pairs, static_cast<unsigned>(chunks < 1024 ? chunks : 1024));
  AccumulateH2oScoresKernel<<<grid, kAccumulateThreads, 0, stream>>>(mass, num_heads,
                                                                      mass_stride, entries, view_n);
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status H2oVictims(const EntryLists& entries, const EvictStep& step, int32_t* victims,
                        cudaStream_t stream) {
  if (absl::Status st = ValidateEntryLists(entries, true, "H2oVictims"); !st.ok()) return st;
  if (absl::Status st = CheckStep(step, false, "H2oVictims"); !st.ok()) return st;
  if (victims == nullptr) return absl::InvalidArgumentError("H2oVictims: null victims");
  const int blocks = entries.num_seqs * entries.num_kv_heads;
  if (blocks == 0) return absl::OkStatus();
  H2oVictimsKernel<<<blocks, kSelectThreads, 0, stream>>>(entries, step, victims);
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status H2oSelectKeep(const EntryLists& entries, const EvictStep& step, int32_t* keep,
                           int32_t keep_stride, int32_t* keep_count, cudaStream_t stream) {
  if (absl::Status st = ValidateEntryLists(entries, true, "H2oSelectKeep"); !st.ok()) return st;
  if (absl::Status st = CheckStep(step, true, "H2oSelectKeep"); !st.ok()) return st;
  if (keep == nullptr || keep_count == nullptr || keep_stride < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("H2oSelectKeep: null keep or keep_count, or keep_stride ", keep_stride));
  }
  const int blocks = entries.num_seqs * entries.num_kv_heads;
  if (blocks == 0) return absl::OkStatus();
  H2oSelectKeepKernel<<<blocks, kSelectThreads, 0, stream>>>(entries, step, keep, keep_stride,
                                                             keep_count);
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace kvscope::kernels::cuda
