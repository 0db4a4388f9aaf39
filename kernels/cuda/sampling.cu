// File: kernels/cuda/sampling.cu
//
// Kernels and launchers for kernels/cuda/sampling.h. See the header for the algorithm and
// its relation to the CPU reference; this file's comments give the invariants the code relies
// on. Two layouts of a row over the block's threads:
//   - strided (thread t reads t, t + blockDim, ...): coalesced; for order-free work
//     (argmax, histograms);
//   - chunked (thread t owns ids [t*chunk, (t+1)*chunk)): for work in ascending token id
//     (the r-th matching id, the cumulative intervals), combined by an exclusive scan in
//     thread order.
#include "kernels/cuda/sampling.h"

#include <cmath>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dispatch.h"

namespace kvscope::kernels::cuda {
namespace {

constexpr int kThreads = 512;  // 16 warps
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xFFFFFFFFu;
constexpr int kFixedFracBits = 80;  // fixed-point masses in units of 2^-80

using U128 = unsigned __int128;

// ---------------------------------------------------------------------------------------
// Keys and probabilities

// Order-preserving key of a logit's rank value: NaN -> -inf, -0 -> +0, then larger float ->
// larger key. Rank order is descending key, ascending id.
__device__ __forceinline__ uint32_t RankKey(float x) {
  if (isnan(x)) x = -INFINITY;
  if (x == 0.0f) x = 0.0f;
  const uint32_t b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float KeyValue(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

// p = exp(l / t - z_max) as the CPU computes it (l is never NaN here: RankKey's value).
__device__ __forceinline__ double Prob(float l, double t, double z_max) {
  return exp(__ddiv_rn(static_cast<double>(l), t) - z_max);
}

// Nonnegative double (< 2^47) -> units of 2^-80, truncated; nonzero input -> >= 1 unit.
__device__ U128 ToFixed(double p) {
  if (!(p > 0.0)) return 0;
  const unsigned long long bits = static_cast<unsigned long long>(__double_as_longlong(p));
  const int biased = static_cast<int>((bits >> 52) & 0x7FF);
  if (biased == 0) return 1;  // subnormal
  const unsigned long long mant = (bits & ((1ull << 52) - 1)) | (1ull << 52);
  const int shift = biased - 1023 - 52 + kFixedFracBits;
  U128 v = 0;
  if (shift >= 0) {
    v = static_cast<U128>(mant) << shift;
  } else if (shift > -64) {
    v = mant >> (-shift);
  }
  return v == 0 ? U128{1} : v;
}

__device__ __forceinline__ double ToDouble(U128 v) {
  const double hi = static_cast<double>(static_cast<unsigned long long>(v >> 64));
  const double lo = static_cast<double>(static_cast<unsigned long long>(v));
  return (hi * 18446744073709551616.0 + lo) * 0x1p-80;
}

// ---------------------------------------------------------------------------------------
// Warp and block primitives (blockDim.x == kThreads)

__device__ __forceinline__ U128 ShflUp(U128 v, int d) {
  const unsigned long long lo = __shfl_up_sync(kFull, static_cast<unsigned long long>(v), d);
  const unsigned long long hi =
      __shfl_up_sync(kFull, static_cast<unsigned long long>(v >> 64), d);
  return (static_cast<U128>(hi) << 64) | lo;
}
__device__ __forceinline__ uint32_t ShflUp(uint32_t v, int d) {
  return __shfl_up_sync(kFull, v, d);
}
__device__ __forceinline__ U128 ShflIdx(U128 v, int src) {
  const unsigned long long lo = __shfl_sync(kFull, static_cast<unsigned long long>(v), src);
  const unsigned long long hi =
      __shfl_sync(kFull, static_cast<unsigned long long>(v >> 64), src);
  return (static_cast<U128>(hi) << 64) | lo;
}
__device__ __forceinline__ uint32_t ShflIdx(uint32_t v, int src) {
  return __shfl_sync(kFull, v, src);
}

// Exclusive prefix sum of v in thread order, for every thread. scratch: [kWarps] shared.
template <typename A>
__device__ A BlockExclusiveScan(A v, A* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  A incl = v;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const A o = ShflUp(incl, d);
    if (lane >= d) incl += o;
  }
  __syncthreads();  // scratch free
  if (lane == 31) scratch[warp] = incl;
  __syncthreads();
  A before = 0;
  for (int w = 0; w < warp; ++w) before += scratch[w];
  return before + incl - v;
}

// The best (rank order) of (key, id) pairs over the block, returned to every thread.
struct Best {
  uint32_t key;
  int64_t id;
};
__device__ __forceinline__ bool Before(const Best& a, const Best& b) {
  return a.key > b.key || (a.key == b.key && a.id < b.id);
}
__device__ Best BlockBest(Best v, Best* scratch) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) {
    Best o;
    o.key = __shfl_xor_sync(kFull, v.key, m);
    o.id = __shfl_xor_sync(kFull, v.id, m);
    if (Before(o, v)) v = o;
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  Best best = scratch[0];
  for (int w = 1; w < kWarps; ++w) {
    if (Before(scratch[w], best)) best = scratch[w];
  }
  return best;
}

template <typename T>
__device__ Best RowArgmax(const T* row, int64_t vocab, Best* scratch) {
  Best best{0u, INT64_MAX};  // key 0 ranks below every real key (-inf maps to 0x007FFFFF)
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const Best c{RankKey(Load(row[i])), i};
    if (Before(c, best)) best = c;
  }
  return BlockBest(best, scratch);
}

// Called by all 32 lanes of warp 0. Bins are visited in DESCENDING order (255 first); returns
// the first bin whose inclusive cumulative value reaches `need` (> 0) and the cumulative value
// of the bins before it in *before; -1 if the total stays below `need`. A nonempty answer has
// a positive bin value, so bins of zero value (empty, or only p == 0 tokens) are never chosen.
template <typename A>
__device__ int SelectBin(const A* bins, A need, A* before) {
  const int lane = threadIdx.x & 31;
  A local[8];
  A lane_sum = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    local[j] = bins[255 - (8 * lane + j)];
    lane_sum += local[j];
  }
  A incl = lane_sum;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const A o = ShflUp(incl, d);
    if (lane >= d) incl += o;
  }
  const A excl = incl - lane_sum;
  int found = -1;
  A cum_before = 0;
  if (excl < need && need <= incl) {  // exactly one lane, as lane sums are >= 0
    A cum = excl;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (found < 0 && cum + local[j] >= need) {
        found = 255 - (8 * lane + j);
        cum_before = cum;
      }
      cum += local[j];
    }
  }
  const unsigned who = __ballot_sync(kFull, found >= 0);
  if (who == 0) return -1;
  const int src = __ffs(who) - 1;
  *before = ShflIdx(cum_before, src);
  return __shfl_sync(kFull, found, src);
}

// ---------------------------------------------------------------------------------------
// Kernels

template <typename T>
__global__ void __launch_bounds__(kThreads) ArgmaxKernel(const T* __restrict__ logits,
                                                          int64_t rows, int64_t vocab,
                                                          int32_t* __restrict__ ids) {
  __shared__ Best scratch[kWarps];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const Best best = RowArgmax(logits + r * vocab, vocab, scratch);
    if (threadIdx.x == 0) ids[r] = static_cast<int32_t>(best.id);
  }
}

struct SampleShared {
  uint32_t count[256];
  U128 mass[256];  // updated as two 64-bit words (AtomicAddMass)
  U128 scan128[kWarps];
  uint32_t scan32[kWarps];
  Best best[kWarps];
  // Results broadcast from one thread (or warp 0) to the block.
  int bin;
  U128 before;
  int64_t found_id;
};

// *m += v, exactly, with two 64-bit shared-memory atomics (the adder that wraps the low word
// carries into the high word, so the pair always sums to the exact total).
__device__ __forceinline__ void AtomicAddMass(U128* m, U128 v) {
  auto* words = reinterpret_cast<unsigned long long*>(m);  // little endian: [0] low, [1] high
  const unsigned long long lo = static_cast<unsigned long long>(v);
  unsigned long long hi = static_cast<unsigned long long>(v >> 64);
  if (lo != 0) {
    const unsigned long long old = atomicAdd(&words[0], lo);
    if (old + lo < old) ++hi;
  }
  if (hi != 0) atomicAdd(&words[1], hi);
}

// Index of the r-th (1-based, r <= number of matches) id in ascending order with pred(id),
// for every thread. Chunked layout.
template <typename Pred>
__device__ int64_t NthMatchingId(int64_t vocab, uint32_t r, Pred pred, SampleShared& sh) {
  const int64_t chunk = (vocab + blockDim.x - 1) / blockDim.x;
  const int64_t begin = threadIdx.x * chunk;
  const int64_t end = begin + chunk < vocab ? begin + chunk : vocab;
  uint32_t n = 0;
  for (int64_t i = begin; i < end; ++i) n += pred(i) ? 1u : 0u;
  const uint32_t excl = BlockExclusiveScan(n, sh.scan32);
  if (excl < r && r <= excl + n) {
    uint32_t c = excl;
    for (int64_t i = begin; i < end; ++i) {
      if (pred(i) && ++c == r) {
        sh.found_id = i;
        break;
      }
    }
  }
  __syncthreads();
  const int64_t id = sh.found_id;
  __syncthreads();  // found_id is reused by the next call
  return id;
}

// logits[i] of a row stored as `dtype` (a block-uniform branch). The sampling kernel reads
// through this instead of being a template: one instantiation instead of three keeps the
// compile time of this (large) kernel down; the loads are not its bottleneck.
__device__ __forceinline__ float LoadLogit(const void* row, int64_t i, DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return static_cast<const float*>(row)[i];
    case DType::kF16:
      return Load(static_cast<const __half*>(row)[i]);
    case DType::kBF16:
      return Load(static_cast<const __nv_bfloat16*>(row)[i]);
  }
  return NAN;
}

// Argmax over a row stored as `dtype`, as RowArgmax.
__device__ Best RowArgmaxAny(const void* row, int64_t vocab, DType dtype, Best* scratch) {
  Best best{0u, INT64_MAX};
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const Best c{RankKey(LoadLogit(row, i, dtype)), i};
    if (Before(c, best)) best = c;
  }
  return BlockBest(best, scratch);
}

__global__ void __launch_bounds__(kThreads)
    SampleKernel(const void* __restrict__ logits, DType dtype, int64_t rows, int64_t vocab,
                 const SamplingParams* __restrict__ params, const double* __restrict__ us,
                 int32_t* __restrict__ ids) {
  __shared__ SampleShared sh;
  const int64_t row_bytes = vocab * (dtype == DType::kF32 ? 4 : 2);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const void* row = static_cast<const char*>(logits) + r * row_bytes;
    const SamplingParams prm = params[r];
    const Best top = RowArgmaxAny(row, vocab, dtype, sh.best);
    const float l_top = LoadLogit(row, top.id, dtype);
    if (!(prm.temperature > 0.0f) || !isfinite(l_top)) {
      if (threadIdx.x == 0) ids[r] = static_cast<int32_t>(top.id);
      continue;
    }
    auto key_of = [row, dtype](int64_t i) { return RankKey(LoadLogit(row, i, dtype)); };

    // ---- top-k: kept_k(i) = key > k_key || (key == k_key && i <= k_id).
    uint32_t k_key = 0;
    int64_t k_id = INT64_MAX;
    const bool use_top_k = prm.top_k > 0 && prm.top_k < vocab;
    if (use_top_k) {
      uint32_t prefix = 0, mask = 0, remaining = static_cast<uint32_t>(prm.top_k);
      for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) sh.count[b] = 0;
        __syncthreads();
        for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
          const uint32_t key = key_of(i);
          if ((key & mask) == prefix) atomicAdd(&sh.count[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x < 32) {
          uint32_t before = 0;
          const int bin = SelectBin(sh.count, remaining, &before);  // always found
          if (threadIdx.x == 0) {
            sh.bin = bin;
            sh.before = before;
          }
        }
        __syncthreads();
        prefix |= static_cast<uint32_t>(sh.bin) << shift;
        mask |= 255u << shift;
        remaining -= static_cast<uint32_t>(sh.before);  // rank among the tokens of `prefix`
        __syncthreads();  // sh.bin / sh.before / count reused
      }
      k_key = prefix;
      k_id = NthMatchingId(vocab, remaining, [&](int64_t i) { return key_of(i) == k_key; }, sh);
    }
    auto kept_k = [&](int64_t i, uint32_t key) {
      return key > k_key || (key == k_key && i <= k_id);
    };

    const double t = static_cast<double>(prm.temperature);
    const double z_max = __ddiv_rn(static_cast<double>(l_top), t);
    auto fixed_p = [&](uint32_t key) { return ToFixed(Prob(KeyValue(key), t, z_max)); };

    // ---- top-p: kept(i) = kept_k(i) && (key > p_key || (key == p_key && i <= p_id)).
    uint32_t p_key = 0;
    int64_t p_id = INT64_MAX;
    U128 total = 0;  // mass of the kept set, once known
    bool total_known = false;
    const int64_t candidates = use_top_k ? prm.top_k : vocab;
    if (prm.top_p < 1.0f && candidates > 1) {
      uint32_t prefix = 0, mask = 0;
      U128 target = 0;  // mass still needed below the current prefix
      U128 better = 0;  // mass of candidates ranked before the current prefix's tokens
      bool cut = true;
      for (int shift = 24; shift >= 0 && cut; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) {
          sh.count[b] = 0;
          sh.mass[b] = 0;
        }
        __syncthreads();
        for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
          const uint32_t key = key_of(i);
          if ((key & mask) == prefix && kept_k(i, key)) {
            const uint32_t bin = (key >> shift) & 255u;
            atomicAdd(&sh.count[bin], 1u);
            AtomicAddMass(&sh.mass[bin], fixed_p(key));
          }
        }
        __syncthreads();
        if (shift == 24) {
          // Level 0 holds every candidate: the total, then the target top_p * total.
          U128 all = 0;
          for (int b = 0; b < 256; ++b) all += sh.mass[b];
          const double target_d = static_cast<double>(prm.top_p) * ToDouble(all);
          if (!(target_d > 0.0)) {
            // top_p <= 0: the first token in rank order reaches it: keep the top alone.
            p_key = RankKey(l_top);
            p_id = top.id;
            total = fixed_p(p_key);
            total_known = true;
            cut = false;
            __syncthreads();
            break;
          }
          target = ToFixed(target_d);
        }
        if (threadIdx.x < 32) {
          U128 before = 0;
          const int bin = SelectBin(sh.mass, target, &before);
          if (threadIdx.x == 0) {
            sh.bin = bin;
            sh.before = before;
          }
        }
        __syncthreads();
        const int bin = sh.bin;
        if (bin < 0) {
          cut = false;  // the mass never reaches the target (rounding): keep all candidates
        } else {
          prefix |= static_cast<uint32_t>(bin) << shift;
          mask |= 255u << shift;
          better += sh.before;
          target -= sh.before;  // > 0: the chosen bin is the first to reach it
        }
        __syncthreads();
      }
      if (cut && !total_known) {
        // Every candidate with key == prefix has the same mass pv; keep the first n of them
        // (ascending id) with better + n * pv >= the original target.
        const U128 pv = fixed_p(prefix);
        const uint32_t tied = sh.count[prefix & 255u];  // count of the last level's bin
        uint32_t n = 1;
        if (pv != 0) {
          double est = ceil(ToDouble(target) / ToDouble(pv));
          if (!(est >= 1.0)) est = 1.0;
          if (est > tied) est = tied;
          n = static_cast<uint32_t>(est);
          while (n > 1 && static_cast<U128>(n - 1) * pv >= target) --n;
          while (n < tied && static_cast<U128>(n) * pv < target) ++n;
        }
        p_key = prefix;
        auto tied_candidate = [&](int64_t i) {
          const uint32_t key = key_of(i);
          return key == p_key && kept_k(i, key);
        };
        p_id = NthMatchingId(vocab, n, tied_candidate, sh);
        total = better + static_cast<U128>(n) * pv;
        total_known = true;
      }
    }
    auto kept = [&](int64_t i, uint32_t key) {
      return kept_k(i, key) && (key > p_key || (key == p_key && i <= p_id));
    };

    // ---- intervals in ascending id over the kept set; chunked layout.
    const int64_t chunk = (vocab + blockDim.x - 1) / blockDim.x;
    const int64_t begin = threadIdx.x * chunk;
    const int64_t end = begin + chunk < vocab ? begin + chunk : vocab;
    U128 mine = 0;
    int64_t last_positive = -1;  // the last kept id with p > 0 in this chunk
    for (int64_t i = begin; i < end; ++i) {
      const uint32_t key = key_of(i);
      if (kept(i, key)) {
        const U128 p = fixed_p(key);
        mine += p;
        if (p != 0) last_positive = i;
      }
    }
    const U128 excl = BlockExclusiveScan(mine, sh.scan128);
    if (!total_known) {
      total = 0;
      for (int w = 0; w < kWarps; ++w) total += sh.scan128[w];
    }
    const double u = us[r] > 0.0 ? us[r] : 0.0;  // also NaN -> 0
    // u >= 1: no interval contains u * total (the CPU's u * total >= its total): fallback.
    // (Scanning with a rounded u * total could stop short of trailing tiny-mass tokens.)
    const bool scan = u < 1.0;
    const U128 threshold = scan ? ToFixed(u * ToDouble(total)) : U128{0};
    // Fallback (u >= 1 or rounding at the top): the last kept token with p > 0.
    const Best last = BlockBest(Best{last_positive >= 0 ? 1u : 0u,
                                     last_positive >= 0 ? -last_positive : INT64_MAX},
                                sh.best);
    if (threadIdx.x == 0) sh.found_id = last.key != 0 ? -last.id : top.id;
    __syncthreads();
    if (scan && excl <= threshold && threshold < excl + mine) {  // exactly one thread
      U128 cum = excl;
      for (int64_t i = begin; i < end; ++i) {
        const uint32_t key = key_of(i);
        if (kept(i, key)) {
          cum += fixed_p(key);
          if (threshold < cum) {
            sh.found_id = i;
            break;
          }
        }
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) ids[r] = static_cast<int32_t>(sh.found_id);
    __syncthreads();
  }
}

absl::Status CheckSelection(const char* op, const void* logits, int64_t rows, int64_t vocab,
                            const int32_t* ids) {
  if (rows < 0 || vocab < 1 || vocab > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": bad shape (rows ", rows, ", vocab ", vocab, "; vocab must be in [1, 2^31))"));
  }
  if (rows > 0 && (logits == nullptr || ids == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": null logits or ids"));
  }
  return absl::OkStatus();
}

unsigned RowBlocks(int64_t rows) {
  return static_cast<unsigned>(rows < (1LL << 30) ? rows : (1LL << 30));
}

}  // namespace

absl::Status Argmax(const void* logits, int64_t rows, int64_t vocab, int32_t* ids, DType dtype,
                    cudaStream_t stream) {
  if (absl::Status st = CheckSelection("Argmax", logits, rows, vocab, ids); !st.ok()) return st;
  return DispatchDType(dtype, [&](auto tag) -> absl::Status {
    using T = typename decltype(tag)::type;
    if (rows == 0) return absl::OkStatus();
    ArgmaxKernel<T><<<RowBlocks(rows), kThreads, 0, stream>>>(static_cast<const T*>(logits),
                                                               rows, vocab, ids);
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return absl::OkStatus();
  });
}

absl::Status SampleTokens(const void* logits, int64_t rows, int64_t vocab,
                          const SamplingParams* params, const double* u, int32_t* ids,
                          DType dtype, cudaStream_t stream) {
  if (absl::Status st = CheckSelection("SampleTokens", logits, rows, vocab, ids); !st.ok()) {
    return st;
  }
  if (rows > 0 && (params == nullptr || u == nullptr)) {
    return absl::InvalidArgumentError("SampleTokens: null params or u");
  }
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("SampleTokens: unsupported element type ", static_cast<int>(dtype)));
  }
  if (rows == 0) return absl::OkStatus();
  SampleKernel<<<RowBlocks(rows), kThreads, 0, stream>>>(logits, dtype, rows, vocab, params, u,
                                                         ids);
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace kvscope::kernels::cuda
