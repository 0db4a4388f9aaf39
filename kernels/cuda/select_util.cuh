// File: kernels/cuda/select_util.cuh
//
// Block-wide selection helpers shared by the strategy kernels (h2o_ops.cu, streaming_ops.cu,
// infinigen_ops.cu). Device code only; include from .cu files. Every helper must be called
// by all threads of a block of kSelectThreads threads (a multiple of 32, all lanes active).
//
// Ordering keys: a candidate is ranked by a 96-bit key (hi: 64 bits, lo: 32 bits), larger is
// better, compared lexicographically. The kernels build keys whose order is exactly the CPU's
// comparator, e.g. (score descending, position ascending) = (OrderedKey(score), ~position),
// so that distinct candidates have distinct keys and no separate tie rule is needed.
#ifndef KVSCOPE_KERNELS_CUDA_SELECT_UTIL_CUH_
#define KVSCOPE_KERNELS_CUDA_SELECT_UTIL_CUH_

#include <cstdint>

namespace kvscope::kernels::cuda {

inline constexpr int kSelectThreads = 256;

// A monotone map of doubles onto uint64: a < b (as doubles) iff OrderedKey(a) <
// OrderedKey(b); -0.0 and +0.0 map to the same key (the CPU compares them equal). NaN is
// not expected (scores are finite sums); it would sort above +inf or below -inf.
__device__ __forceinline__ unsigned long long OrderedKey(double x) {
  if (x == 0.0) x = 0.0;  // -0.0 -> +0.0
  const unsigned long long bits = static_cast<unsigned long long>(__double_as_longlong(x));
  return (bits >> 63) ? ~bits : (bits | 0x8000000000000000ULL);
}

struct Key96 {
  unsigned long long hi;
  unsigned lo;
};

__device__ __forceinline__ bool KeyGreaterEq(const Key96& a, const Key96& b) {
  return a.hi != b.hi ? a.hi > b.hi : a.lo >= b.lo;
}
__device__ __forceinline__ bool KeyLess(const Key96& a, const Key96& b) {
  return a.hi != b.hi ? a.hi < b.hi : a.lo < b.lo;
}

// Shared memory the helpers below use; declare one per block (__shared__ SelectScratch s).
struct SelectScratch {
  unsigned hist[256];
  int warp_counts[kSelectThreads / 32];
  int k_left;
  int digit;
  Key96 best_key[kSelectThreads / 32];
  int best_index[kSelectThreads / 32];
};

// The k-th largest key (1 <= k <= number of valid candidates) among candidates i < n for
// which key_at(i, &key) returns true; MSB-first radix select, 8 bits per pass (12 passes).
// With distinct keys exactly k candidates have key >= the result.
template <typename KeyAt>
__device__ Key96 BlockSelectKthLargest(int n, int k, KeyAt key_at, SelectScratch& s) {
  unsigned long long hi_prefix = 0, hi_mask = 0;
  unsigned lo_prefix = 0, lo_mask = 0;
  if (threadIdx.x == 0) s.k_left = k;
  for (int pass = 0; pass < 12; ++pass) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) s.hist[b] = 0;
    __syncthreads();
    // Uniform trip count (all lanes reach the warp vote); candidates of equal digit in a
    // warp add once (keys with a common prefix mostly share the first digits, and
    // per-thread atomics on one bin would serialise).
    for (int start = 0; start < n; start += blockDim.x) {
      const int i = start + static_cast<int>(threadIdx.x);
      Key96 key{0ULL, 0u};
      bool valid = i < n && key_at(i, &key);
      valid = valid && (key.hi & hi_mask) == hi_prefix && (key.lo & lo_mask) == lo_prefix;
      const unsigned digit =
          !valid ? 256u
                 : pass < 8 ? static_cast<unsigned>(key.hi >> (56 - 8 * pass)) & 255u
                            : (key.lo >> (24 - 8 * (pass - 8))) & 255u;
      const unsigned peers = __match_any_sync(0xffffffffu, digit);
      if (valid && static_cast<int>(threadIdx.x & 31) == __ffs(peers) - 1) {
        atomicAdd(&s.hist[digit], static_cast<unsigned>(__popc(peers)));
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int left = s.k_left;
      int d = 255;
      for (; d > 0; --d) {
        if (left <= static_cast<int>(s.hist[d])) break;
        left -= static_cast<int>(s.hist[d]);
      }
      s.k_left = left;
      s.digit = d;
    }
    __syncthreads();
    const unsigned d = static_cast<unsigned>(s.digit);
    if (pass < 8) {
      const int shift = 56 - 8 * pass;
      hi_prefix |= static_cast<unsigned long long>(d) << shift;
      hi_mask |= 255ULL << shift;
    } else {
      const int shift = 24 - 8 * (pass - 8);
      lo_prefix |= d << shift;
      lo_mask |= 255u << shift;
    }
    // s.digit is rewritten only after the next pass's two barriers: no third barrier needed.
  }
  return Key96{hi_prefix, lo_prefix};
}

// Writes every i < n with flag(i) true to out[0..count) in ascending order (dropping those
// that would land at out[cap] or beyond) and returns count (to every thread).
template <typename Flag>
__device__ int BlockCompactAscending(int n, Flag flag, int32_t* out, int cap, SelectScratch& s) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  int base = 0;
  for (int start = 0; start < n; start += blockDim.x) {
    const int i = start + static_cast<int>(threadIdx.x);
    const bool f = i < n && flag(i);
    const unsigned ballot = __ballot_sync(0xffffffffu, f);
    if (lane == 0) s.warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int offset = base, total = 0;
    for (int w = 0; w < warps; ++w) {
      if (w < warp) offset += s.warp_counts[w];
      total += s.warp_counts[w];
    }
    offset += __popc(ballot & ((1u << lane) - 1u));
    if (f && offset < cap) out[offset] = i;
    __syncthreads();
    base += total;
  }
  return base;
}

// The candidate with the SMALLEST key among i < n with key_at(i, &key) true (ties: the lower
// i); -1 when there is none. Returned to every thread.
template <typename KeyAt>
__device__ int BlockArgMinKey(int n, KeyAt key_at, SelectScratch& s) {
  Key96 best{~0ULL, ~0u};
  int best_i = -1;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    Key96 key;
    if (!key_at(i, &key)) continue;
    if (best_i < 0 || KeyLess(key, best)) {  // i ascends per thread: ties keep the lower i
      best = key;
      best_i = i;
    }
  }
  for (int off = 16; off > 0; off >>= 1) {
    const unsigned long long ohi = __shfl_down_sync(0xffffffffu, best.hi, off);
    const unsigned olo = __shfl_down_sync(0xffffffffu, best.lo, off);
    const int oi = __shfl_down_sync(0xffffffffu, best_i, off);
    const Key96 other{ohi, olo};
    if (oi >= 0 && (best_i < 0 || KeyLess(other, best) ||
                    (!KeyLess(best, other) && oi < best_i))) {
      best = other;
      best_i = oi;
    }
  }
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) {
    s.best_key[warp] = best;
    s.best_index[warp] = best_i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) {
      const int oi = s.best_index[w];
      const Key96 other = s.best_key[w];
      if (oi >= 0 && (best_i < 0 || KeyLess(other, best) ||
                      (!KeyLess(best, other) && oi < best_i))) {
        best = other;
        best_i = oi;
      }
    }
    s.best_index[0] = best_i;
  }
  __syncthreads();
  const int result = s.best_index[0];
  __syncthreads();  // s.best_index is reused by the next call
  return result;
}

// Number of i < n with pred(i) true, to every thread.
template <typename Pred>
__device__ int BlockCount(int n, Pred pred) {
  int c = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) c += pred(i) ? 1 : 0;
  // __syncthreads_count counts threads, not values: reduce through a loop of bits instead.
  int total = 0;
  for (int bit = 0; bit < 31; ++bit) {
    total += __syncthreads_count((c >> bit) & 1) << bit;
  }
  return total;
}

}  // namespace kvscope::kernels::cuda

#endif  // KVSCOPE_KERNELS_CUDA_SELECT_UTIL_CUH_
