// File: kernels/cuda/attention_decode.cu
//
// Paged attention over slot lists (attention_decode.h): the split kernel, the merge of
// splits, and the attention-mass accumulation for H2O.
//
// Layout of one CTA of DecodeKernel (128 threads, 4 warps). A warp is cut into subgroups of
// kLanesPerKey lanes; a subgroup reads one K/V row per key, each lane 16 bytes (a vector of
// kVecElems elements) per kVecsPerLane, so one row is one coalesced segment. Each subgroup
// walks its own keys kUnroll at a time (all kUnroll K and V rows issued before the first
// use), keeps a running max m, sum l and unnormalized output per query head for the keys it
// saw, and at the end the subgroups are merged through shared memory. Scores are kept in the
// log2 domain (q is prescaled by scale * log2(e)) so every exponential is one exp2f.
#include "kernels/cuda/attention_decode.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dispatch.h"

namespace kvscope::kernels::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
// Query heads of one KV head handled by one CTA: the kernel is instantiated for tiles of 1,
// 4 and 8 heads and a launch takes the smallest tile that holds the GQA group (8 for larger
// groups, in chunks), so q and the accumulators of heads a CTA does not have take no
// registers (MHA: 1 head, 239 -> about 100 registers per thread for bf16 head_dim 128, more
// CTAs per SM). 2-head groups take the 4-head tile.
constexpr int kMaxGroupTile = 8;
int32_t GroupTileFor(int32_t group) { return group <= 1 ? 1 : group <= 4 ? 4 : kMaxGroupTile; }
constexpr float kLog2e = 1.4426950408889634f;
constexpr size_t kWorkspaceAlign = 256;

template <typename T, int kHeadDim>
struct DecodeTraits {
  static constexpr bool kGeneric = kHeadDim == kAnyHeadDim;
  // Elements per vector: 16 bytes for the specialised sizes, one element for the generic one.
  static constexpr int kVecElems = kGeneric ? 1 : 16 / static_cast<int>(sizeof(T));
  static constexpr int kLanesPerKey =
      kGeneric ? 32 : (kHeadDim / kVecElems < 32 ? kHeadDim / kVecElems : 32);
  static constexpr int kVecsPerLane =
      kGeneric ? kMaxHeadDim / 32 : kHeadDim / (kVecElems * kLanesPerKey);
  static constexpr int kElemsPerLane = kVecElems * kVecsPerLane;
  static constexpr int kSubPerWarp = 32 / kLanesPerKey;
  static constexpr int kNumSub = kWarps * kSubPerWarp;
  static constexpr int kDimMax = kGeneric ? kMaxHeadDim : kHeadDim;
  // Keys per subgroup step: fewer when a lane holds more than 16 bytes per row.
  static constexpr int kUnroll = kElemsPerLane * static_cast<int>(sizeof(T)) > 16 ? 2 : 4;
  using Raw = std::conditional_t<kGeneric, T, uint4>;
  static_assert(kElemsPerLane <= 8, "lane tile too large");
};

// Widens one raw vector into floats.
template <typename T>
__device__ __forceinline__ void Widen(const uint4& raw, float* f) {
  if constexpr (std::is_same_v<T, float>) {
    f[0] = __uint_as_float(raw.x);
    f[1] = __uint_as_float(raw.y);
    f[2] = __uint_as_float(raw.z);
    f[3] = __uint_as_float(raw.w);
  } else {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float2 two;
      if constexpr (std::is_same_v<T, __half>) {
        __half2 h;
        memcpy(&h, &words[i], 4);
        two = __half22float2(h);
      } else {
        __nv_bfloat162 h;
        memcpy(&h, &words[i], 4);
        two = __bfloat1622float2(h);
      }
      f[2 * i] = two.x;
      f[2 * i + 1] = two.y;
    }
  }
}
template <typename T>
__device__ __forceinline__ void Widen(const T& raw, float* f) {
  f[0] = Load(raw);
}

// Sequence of query row t: token_seq[t], or the s with seq_q_start[s] <= t <
// seq_q_start[s + 1]; -1 when there is none.
__device__ __forceinline__ int32_t SequenceOf(const int32_t* token_seq, const int32_t* seq_q_start,
                                              int32_t num_seqs, int64_t t) {
  if (token_seq != nullptr) {
    const int32_t s = token_seq[t];
    return (s >= 0 && s < num_seqs) ? s : -1;
  }
  if (t < seq_q_start[0] || t >= seq_q_start[num_seqs]) return -1;
  int32_t lo = 0, hi = num_seqs - 1;  // largest s with seq_q_start[s] <= t
  while (lo < hi) {
    const int32_t mid = (lo + hi + 1) / 2;
    if (seq_q_start[mid] <= t) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

struct DecodeParams {
  const void* q;
  int64_t q_stride;
  void* out;
  int64_t out_stride;
  const int32_t* token_seq;
  const int32_t* seq_q_start;
  const int32_t* token_pos;
  const void* pool_k;
  const void* pool_v;
  int64_t num_slots;
  int32_t num_kv_heads;
  int32_t block_size;
  int32_t head_dim;
  int32_t num_heads;
  int32_t group;        // query heads per KV head
  int32_t head_chunks;  // ceil(group / kGroupTile)
  const SeqKvView* seqs;
  int32_t num_seqs;
  float scale_log2;  // scale * log2(e)
  int32_t num_splits;
  float* partial_o;   // [tokens][num_heads][num_splits][head_dim] when num_splits > 1
  float* partial_ml;  // [tokens][num_heads][num_splits][2]
  float* lse;         // [tokens][num_heads] log2-sum-exp2 of the scaled scores, or null
  int32_t* error_flag;
};

// grid: (tokens, num_kv_heads * head_chunks, num_splits); block: kThreads. head_chunks =
// ceil(group / kGroupTile).
template <typename T, int kHeadDim, int kGroupTile>
__global__ void __launch_bounds__(kThreads) DecodeKernel(const DecodeParams p) {
  using Tr = DecodeTraits<T, kHeadDim>;
  using Raw = typename Tr::Raw;
  constexpr int L = Tr::kLanesPerKey;
  constexpr int kU = Tr::kUnroll;
  constexpr int kE = Tr::kElemsPerLane;

  __shared__ float s_m[Tr::kNumSub][kGroupTile];
  __shared__ float s_l[Tr::kNumSub][kGroupTile];
  __shared__ float s_fin[kGroupTile][2];
  __shared__ float s_acc[Tr::kNumSub][kGroupTile][Tr::kDimMax];

  const int64_t t = blockIdx.x;
  const int32_t g = blockIdx.y / p.head_chunks;
  const int32_t chunk = blockIdx.y % p.head_chunks;
  const int32_t split = blockIdx.z;
  const int32_t head0 = g * p.group + chunk * kGroupTile;  // first query head of this CTA
  const int32_t gq = min(kGroupTile, p.group - chunk * kGroupTile);
  const int32_t head_dim = Tr::kGeneric ? p.head_dim : kHeadDim;

  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int sg = warp * Tr::kSubPerWarp + lane / L;
  const int lis = lane % L;

  // ---- The key range of this split.
  const int32_t s = SequenceOf(p.token_seq, p.seq_q_start, p.num_seqs, t);
  // Row-range form (the prefill's general path, always unsplit): a row owned by no sequence
  // is left untouched and flags nothing (attention_prefill.h). With splits the merge kernel
  // would still read this row's partials, so then the row gets zeros as in the token_seq
  // form. CTA-uniform, before any barrier.
  if (s < 0 && p.token_seq == nullptr && p.num_splits == 1) return;
  int32_t n = 0;
  const int32_t* slots = nullptr;
  const int32_t* positions = nullptr;
  if (s >= 0) {
    const SeqKvView seq = p.seqs[s];
    n = seq.num_cached;
    const int64_t off = seq.head_stride > 0 ? g * seq.head_stride : 0;
    slots = seq.slots + off;
    positions = seq.positions + off;
  } else if (threadIdx.x == 0 && split == 0 && chunk == 0 && g == 0 && p.error_flag) {
    atomicOr(p.error_flag, kErrorSeqOutOfRange);
  }
  const int32_t qpos = p.token_pos[t];
  const int32_t per_split = (n + p.num_splits - 1) / p.num_splits;
  const int32_t begin = min(n, split * per_split);
  const int32_t end = min(n, begin + per_split);

  // ---- q of the CTA's heads, prescaled, in registers: q[h][e] is dim Dim(v, i).
  auto dim_of = [&](int e) {
    return ((e / Tr::kVecElems) * L + lis) * Tr::kVecElems + e % Tr::kVecElems;
  };
  float q[kGroupTile][kE];
  float acc[kGroupTile][kE];
  float m[kGroupTile], l[kGroupTile];
  const T* qt = static_cast<const T*>(p.q) + t * p.q_stride;
#pragma unroll
  for (int h = 0; h < kGroupTile; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.f;
#pragma unroll
    for (int e = 0; e < kE; ++e) {
      const int d = dim_of(e);
      q[h][e] = (h < gq && d < head_dim)
                    ? Load(qt[static_cast<int64_t>(head0 + h) * head_dim + d]) * p.scale_log2
                    : 0.f;
      acc[h][e] = 0.f;
    }
  }

  const T* pool_k = static_cast<const T*>(p.pool_k);
  const T* pool_v = static_cast<const T*>(p.pool_v);
  const int64_t head_off = static_cast<int64_t>(g) * p.block_size * head_dim;
  const int64_t block_stride = static_cast<int64_t>(p.num_kv_heads) * p.block_size * head_dim;
  constexpr int kStep = Tr::kNumSub * kU;

  // Slot/position of the next step, loaded one step ahead.
  int32_t nslot[kU], npos[kU];
  auto load_index = [&](int32_t base) {
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int32_t j = base + u;
      nslot[u] = -1;
      npos[u] = 0;
      if (j < end) {
        nslot[u] = slots[j];
        npos[u] = positions[j];
      }
    }
  };
  // The loop bound is warp-uniform (the shuffles below need every lane): subgroup keys
  // past `end` are masked, not skipped.
  const int32_t sub_off = (sg % Tr::kSubPerWarp) * kU;
  const int32_t warp_begin = begin + warp * Tr::kSubPerWarp * kU;
  load_index(warp_begin + sub_off);

  for (int32_t wb = warp_begin; wb < end; wb += kStep) {
    const int32_t base = wb + sub_off;
    bool vis[kU];
    Raw kraw[kU][Tr::kVecsPerLane], vraw[kU][Tr::kVecsPerLane];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int32_t j = base + u;
      const int64_t slot = nslot[u];
      const bool in_range = slot >= 0 && slot < p.num_slots;
      if (j < end && !in_range && lis == 0 && p.error_flag) {
        atomicOr(p.error_flag, kErrorSlotOutOfRange);
      }
      vis[u] = j < end && in_range && npos[u] <= qpos;
      const int64_t row = vis[u] ? (slot / p.block_size) * block_stride + head_off +
                                       (slot % p.block_size) * head_dim
                                 : 0;
#pragma unroll
      for (int vi = 0; vi < Tr::kVecsPerLane; ++vi) {
        const int d0 = (vi * L + lis) * Tr::kVecElems;
        if constexpr (Tr::kGeneric) {
          const bool ok = vis[u] && d0 < head_dim;
          kraw[u][vi] = ok ? pool_k[row + d0] : Store<T>(0.f);
          vraw[u][vi] = ok ? pool_v[row + d0] : Store<T>(0.f);
        } else {
          kraw[u][vi] =
              vis[u] ? *reinterpret_cast<const uint4*>(pool_k + row + d0) : make_uint4(0, 0, 0, 0);
          vraw[u][vi] =
              vis[u] ? *reinterpret_cast<const uint4*>(pool_v + row + d0) : make_uint4(0, 0, 0, 0);
        }
      }
    }
    load_index(base + kStep);  // prefetch the next step's indices

    // Scores of every (head, key).
    float sc[kGroupTile][kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      float kf[kE];
#pragma unroll
      for (int vi = 0; vi < Tr::kVecsPerLane; ++vi) Widen<T>(kraw[u][vi], kf + vi * Tr::kVecElems);
#pragma unroll
      for (int h = 0; h < kGroupTile; ++h) {
        float dot = 0.f;
        if (h < gq) {
#pragma unroll
          for (int e = 0; e < kE; ++e) dot = fmaf(q[h][e], kf[e], dot);
#pragma unroll
          for (int o = L / 2; o >= 1; o /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        }
        sc[h][u] = vis[u] ? dot : -INFINITY;
      }
    }
    // Online softmax update.
    float vf[kU][kE];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
#pragma unroll
      for (int vi = 0; vi < Tr::kVecsPerLane; ++vi)
        Widen<T>(vraw[u][vi], vf[u] + vi * Tr::kVecElems);
    }
#pragma unroll
    for (int h = 0; h < kGroupTile; ++h) {
      if (h >= gq) continue;
      float mx = m[h];
#pragma unroll
      for (int u = 0; u < kU; ++u) mx = fmaxf(mx, sc[h][u]);
      if (mx == -INFINITY) continue;  // nothing visible yet
      const float alpha = exp2f(m[h] - mx);
      m[h] = mx;
      float pr[kU];
      float psum = 0.f;
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        pr[u] = exp2f(sc[h][u] - mx);
        psum += pr[u];
      }
      l[h] = l[h] * alpha + psum;
#pragma unroll
      for (int e = 0; e < kE; ++e) {
        float a = acc[h][e] * alpha;
#pragma unroll
        for (int u = 0; u < kU; ++u) a = fmaf(pr[u], vf[u][e], a);
        acc[h][e] = a;
      }
    }
  }

  // ---- Merge the subgroups.
  if (lis == 0) {
#pragma unroll
    for (int h = 0; h < kGroupTile; ++h) {
      s_m[sg][h] = m[h];
      s_l[sg][h] = l[h];
    }
  }
  __syncthreads();
#pragma unroll
  for (int h = 0; h < kGroupTile; ++h) {
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < Tr::kNumSub; ++i) mx = fmaxf(mx, s_m[i][h]);
    const float f = m[h] == -INFINITY ? 0.f : exp2f(m[h] - mx);
#pragma unroll
    for (int e = 0; e < kE; ++e) {
      const int d = dim_of(e);
      if (d < Tr::kDimMax) s_acc[sg][h][d] = acc[h][e] * f;
    }
    if (threadIdx.x == 0) {
      float sum = 0.f;
#pragma unroll
      for (int i = 0; i < Tr::kNumSub; ++i) {
        if (s_m[i][h] != -INFINITY) sum += s_l[i][h] * exp2f(s_m[i][h] - mx);
      }
      s_fin[h][0] = mx;
      s_fin[h][1] = sum;
    }
  }
  __syncthreads();

  const int64_t row0 = t * p.num_heads + head0;  // (token, head) row of head h: row0 + h
  for (int idx = threadIdx.x; idx < gq * head_dim; idx += kThreads) {
    const int h = idx / head_dim;
    const int d = idx - h * head_dim;
    float o = 0.f;
#pragma unroll
    for (int i = 0; i < Tr::kNumSub; ++i) o += s_acc[i][h][d];
    const float mx = s_fin[h][0];
    const float sum = s_fin[h][1];
    if (p.num_splits == 1) {
      T* out =
          static_cast<T*>(p.out) + t * p.out_stride + static_cast<int64_t>(head0 + h) * head_dim;
      out[d] = Store<T>(sum > 0.f ? o / sum : 0.f);
      if (d == 0) {
        if (sum <= 0.f && p.error_flag) atomicOr(p.error_flag, kErrorNoVisibleKey);
        if (p.lse) p.lse[row0 + h] = sum > 0.f ? mx + log2f(sum) : INFINITY;
      }
    } else {
      const int64_t prow = (row0 + h) * p.num_splits + split;
      p.partial_o[prow * head_dim + d] = o;
      if (d == 0) {
        p.partial_ml[2 * prow] = mx;
        p.partial_ml[2 * prow + 1] = sum;
      }
    }
  }
}

// grid: tokens * num_heads; merges the splits of one (token, head) row.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    MergeSplitsKernel(const float* __restrict__ partial_o, const float* __restrict__ partial_ml,
                      int32_t num_splits, int32_t num_heads, int32_t head_dim, void* out_v,
                      int64_t out_stride, float* lse, int32_t* error_flag) {
  __shared__ float s_w[kMaxAttentionSplits];
  const int64_t row = blockIdx.x;
  const int64_t t = row / num_heads;
  const int32_t h = static_cast<int32_t>(row % num_heads);
  const float* ml = partial_ml + row * num_splits * 2;
  float mx = -INFINITY;
  for (int i = 0; i < num_splits; ++i) mx = fmaxf(mx, ml[2 * i]);
  float sum = 0.f;
  for (int i = 0; i < num_splits; ++i) {
    if (ml[2 * i] != -INFINITY) sum += ml[2 * i + 1] * exp2f(ml[2 * i] - mx);
  }
  for (int i = threadIdx.x; i < num_splits; i += blockDim.x) {
    s_w[i] = (sum > 0.f && ml[2 * i] != -INFINITY) ? exp2f(ml[2 * i] - mx) / sum : 0.f;
  }
  __syncthreads();
  T* out = static_cast<T*>(out_v) + t * out_stride + static_cast<int64_t>(h) * head_dim;
  const float* po = partial_o + row * num_splits * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float o = 0.f;
    for (int i = 0; i < num_splits; ++i)
      o = fmaf(po[static_cast<int64_t>(i) * head_dim + d], s_w[i], o);
    out[d] = Store<T>(o);
  }
  if (threadIdx.x == 0) {
    if (sum <= 0.f && error_flag) atomicOr(error_flag, kErrorNoVisibleKey);
    if (lse) lse[row] = sum > 0.f ? mx + log2f(sum) : INFINITY;
  }
}

constexpr int kMassThreads = 128;

// grid: (ceil(max_cached / kMassThreads), num_heads, num_seqs). Thread j of sequence s, head
// h adds, for every query token of s in ascending order, exp2(score - lse) of listed entry j.
template <typename T>
__global__ void __launch_bounds__(kMassThreads)
    AttnMassKernel(const T* __restrict__ q, int64_t q_stride, int64_t tokens, int32_t num_heads,
                   int32_t group, const int32_t* __restrict__ token_seq,
                   const int32_t* __restrict__ token_pos, const T* __restrict__ pool_k,
                   int64_t num_slots, int32_t num_kv_heads, int32_t block_size, int32_t head_dim,
                   const SeqKvView* __restrict__ seqs, const float* __restrict__ lse,
                   float scale_log2, float* attn_mass, int64_t max_cached) {
  __shared__ float s_q[kMaxHeadDim];
  const int32_t s = blockIdx.z;
  const int32_t h = blockIdx.y;
  const int32_t g = h / group;
  const SeqKvView seq = seqs[s];
  if (static_cast<int64_t>(blockIdx.x) * kMassThreads >= seq.num_cached) return;  // uniform
  const int32_t j = blockIdx.x * kMassThreads + threadIdx.x;
  const bool listed = j < seq.num_cached;
  const int64_t off = seq.head_stride > 0 ? g * seq.head_stride : 0;
  const int64_t slot = listed ? seq.slots[off + j] : -1;
  const int32_t kpos = listed ? seq.positions[off + j] : 0;
  const bool valid = listed && slot >= 0 && slot < num_slots;
  const T* krow = pool_k +
                  ((valid ? slot / block_size : 0) * num_kv_heads + g) *
                      static_cast<int64_t>(block_size) * head_dim +
                  (valid ? slot % block_size : 0) * static_cast<int64_t>(head_dim);
  float* mass = attn_mass + (static_cast<int64_t>(s) * num_heads + h) * max_cached;
  float acc = listed ? mass[j] : 0.f;
  for (int64_t t = 0; t < tokens; ++t) {
    if (token_seq[t] != s) continue;  // uniform over the CTA
    __syncthreads();
    for (int d = threadIdx.x; d < head_dim; d += kMassThreads) {
      s_q[d] = Load(q[t * q_stride + static_cast<int64_t>(h) * head_dim + d]) * scale_log2;
    }
    __syncthreads();
    const float lse_t = lse[t * num_heads + h];
    if (valid && kpos <= token_pos[t]) {
      float dot = 0.f;
      for (int d = 0; d < head_dim; ++d) dot = fmaf(s_q[d], Load(krow[d]), dot);
      acc += exp2f(dot - lse_t);
    }
  }
  if (listed) mass[j] = acc;
}

// grid: (ceil(max_context / 256), num_seqs); block 256.
__global__ void BlockTablesKernel(const int32_t* __restrict__ block_tables,
                                  int32_t max_blocks_per_seq,
                                  const int32_t* __restrict__ context_lens, int32_t block_size,
                                  int32_t max_context, int32_t* __restrict__ slots,
                                  int32_t* __restrict__ positions, SeqKvView* views,
                                  int32_t* token_seq, int32_t* token_pos, int32_t* error_flag) {
  const int32_t s = blockIdx.y;
  const int32_t len = context_lens[s];
  const int64_t cap =
      min(static_cast<int64_t>(max_context), static_cast<int64_t>(max_blocks_per_seq) * block_size);
  const int32_t n = static_cast<int32_t>(len < 0 ? 0 : (len > cap ? cap : len));
  const int64_t base = static_cast<int64_t>(s) * max_context;
  const int32_t j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j < n) {
    slots[base + j] =
        block_tables[static_cast<int64_t>(s) * max_blocks_per_seq + j / block_size] * block_size +
        j % block_size;
    positions[base + j] = j;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    views[s] = SeqKvView{slots + base, positions + base, n, 0};
    if (token_seq) token_seq[s] = s;
    if (token_pos) token_pos[s] = n - 1;
    if (n != len && error_flag) atomicOr(error_flag, kErrorSlotOutOfRange);
  }
}

size_t AlignUp(size_t x) { return (x + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

int MultiprocessorCount() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      sms <= 0) {
    (void)cudaGetLastError();  // clear a sticky "no device" from the queries
    return 132;
  }
  return sms;
}

struct WorkspaceLayout {
  size_t partial_o = 0, partial_ml = 0, lse = 0, total = 0;
};

WorkspaceLayout Layout(int64_t tokens, int32_t num_heads, int32_t head_dim, int32_t splits,
                       bool with_mass) {
  WorkspaceLayout w;
  const size_t rows = static_cast<size_t>(tokens) * num_heads;
  size_t at = 0;
  if (splits > 1) {
    w.partial_o = at;
    at += AlignUp(rows * splits * head_dim * sizeof(float));
    w.partial_ml = at;
    at += AlignUp(rows * splits * 2 * sizeof(float));
  }
  if (with_mass) {
    w.lse = at;
    at += AlignUp(rows * sizeof(float));
  }
  w.total = at;
  return w;
}

}  // namespace

int32_t ChooseAttentionSplits(int64_t tokens, int32_t num_heads, int32_t num_kv_heads,
                              int32_t max_cached, const AttentionOptions& options) {
  if (options.num_splits >= 1) return std::min(options.num_splits, kMaxAttentionSplits);
  if (tokens <= 0 || num_kv_heads <= 0 || num_heads < num_kv_heads || max_cached < 512) return 1;
  const int32_t group = num_heads / num_kv_heads;
  const int32_t tile = GroupTileFor(group);
  const int64_t ctas = tokens * num_kv_heads * ((group + tile - 1) / tile);
  const int64_t target = 2LL * MultiprocessorCount();
  if (ctas >= target) return 1;
  const int64_t by_occupancy = (target + ctas - 1) / ctas;
  const int64_t by_length = max_cached / 256;  // at least 256 keys per split
  return static_cast<int32_t>(
      std::max<int64_t>(1, std::min<int64_t>({by_occupancy, by_length, kMaxAttentionSplits})));
}

size_t AttentionWorkspaceBytes(int64_t tokens, int32_t num_heads, int32_t num_kv_heads,
                               int32_t head_dim, int32_t max_cached, bool with_attn_mass,
                               const AttentionOptions& options) {
  if (tokens <= 0 || num_heads <= 0 || head_dim <= 0) return 0;
  const int32_t splits =
      ChooseAttentionSplits(tokens, num_heads, num_kv_heads, max_cached, options);
  return Layout(tokens, num_heads, head_dim, splits, with_attn_mass).total;
}

absl::Status BlockTablesToSlotLists(const int32_t* block_tables, int32_t max_blocks_per_seq,
                                    const int32_t* context_lens, int32_t num_seqs,
                                    int32_t block_size, int32_t max_context, int32_t* slots,
                                    int32_t* positions, SeqKvView* views, int32_t* token_seq,
                                    int32_t* token_pos, int32_t* error_flag, cudaStream_t stream) {
  if (num_seqs < 0 || num_seqs > 65535 || max_blocks_per_seq <= 0 || block_size <= 0 ||
      max_context <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "BlockTablesToSlotLists: bad sizes (num_seqs ", num_seqs, ", max_blocks_per_seq ",
        max_blocks_per_seq, ", block_size ", block_size, ", max_context ", max_context, ")"));
  }
  if (num_seqs == 0) return absl::OkStatus();
  if (block_tables == nullptr || context_lens == nullptr || slots == nullptr ||
      positions == nullptr || views == nullptr) {
    return absl::InvalidArgumentError("BlockTablesToSlotLists: null input or output");
  }
  const dim3 grid((max_context + 255) / 256, num_seqs);
  BlockTablesKernel<<<grid, 256, 0, stream>>>(block_tables, max_blocks_per_seq, context_lens,
                                              block_size, max_context, slots, positions, views,
                                              token_seq, token_pos, error_flag);
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

namespace internal {

absl::Status PagedAttentionImpl(const void* q, int64_t q_stride, int64_t tokens, int32_t num_heads,
                                const int32_t* token_seq, const int32_t* seq_q_start,
                                const int32_t* token_pos, const CudaKvPool& pool,
                                const SeqKvView* seqs, int32_t num_seqs, int32_t max_cached,
                                float scale, void* out, int64_t out_stride, float* attn_mass,
                                void* workspace, size_t workspace_bytes, int32_t* error_flag,
                                const AttentionOptions& options, cudaStream_t stream) {
  if (tokens < 0 || num_seqs < 0) {
    return absl::InvalidArgumentError("PagedAttention: negative tokens or num_seqs");
  }
  if (tokens == 0) return absl::OkStatus();
  if (absl::Status st = CheckCudaKvPool(pool, "PagedAttention"); !st.ok()) return st;
  if (num_heads <= 0 || num_heads % pool.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("PagedAttention: num_heads ", num_heads,
                                                   " is not a positive multiple of num_kv_heads ",
                                                   pool.num_kv_heads));
  }
  const int32_t head_dim = pool.head_dim;
  if (head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("PagedAttention: head_dim ", head_dim, " > ", kMaxHeadDim));
  }
  const int64_t row = static_cast<int64_t>(num_heads) * head_dim;
  if (q_stride < row || out_stride < row) {
    return absl::InvalidArgumentError(absl::StrCat("PagedAttention: q_stride ", q_stride,
                                                   " / out_stride ", out_stride,
                                                   " < num_heads * head_dim = ", row));
  }
  if (q == nullptr || out == nullptr || token_pos == nullptr || seqs == nullptr || num_seqs == 0 ||
      (token_seq == nullptr && seq_q_start == nullptr)) {
    return absl::InvalidArgumentError(
        "PagedAttention: null q, out, token_pos, seqs or token_seq, or no sequences");
  }
  if (max_cached < 0) {
    return absl::InvalidArgumentError(absl::StrCat("PagedAttention: max_cached ", max_cached));
  }
  if (attn_mass != nullptr && token_seq == nullptr) {
    return absl::InvalidArgumentError("PagedAttention: attn_mass needs token_seq");
  }
  if (tokens > 0x7fffffffLL) {
    return absl::InvalidArgumentError("PagedAttention: more than 2^31 - 1 query tokens");
  }
  const int32_t splits =
      ChooseAttentionSplits(tokens, num_heads, pool.num_kv_heads, max_cached, options);
  const WorkspaceLayout layout = Layout(tokens, num_heads, head_dim, splits, attn_mass != nullptr);
  if (layout.total > 0 && (workspace == nullptr || workspace_bytes < layout.total)) {
    return absl::InvalidArgumentError(absl::StrCat("PagedAttention: workspace of ", workspace_bytes,
                                                   " bytes < ", layout.total,
                                                   " needed (AttentionWorkspaceBytes)"));
  }
  char* ws = static_cast<char*>(workspace);
  DecodeParams p{};
  p.q = q;
  p.q_stride = q_stride;
  p.out = out;
  p.out_stride = out_stride;
  p.token_seq = token_seq;
  p.seq_q_start = seq_q_start;
  p.token_pos = token_pos;
  p.pool_k = pool.k;
  p.pool_v = pool.v;
  p.num_slots = pool.num_slots();
  p.num_kv_heads = pool.num_kv_heads;
  p.block_size = pool.block_size;
  p.head_dim = head_dim;
  p.num_heads = num_heads;
  p.group = num_heads / pool.num_kv_heads;
  const int32_t tile = GroupTileFor(p.group);
  p.head_chunks = (p.group + tile - 1) / tile;
  p.seqs = seqs;
  p.num_seqs = num_seqs;
  p.scale_log2 = scale * kLog2e;
  p.num_splits = splits;
  p.partial_o = splits > 1 ? reinterpret_cast<float*>(ws + layout.partial_o) : nullptr;
  p.partial_ml = splits > 1 ? reinterpret_cast<float*>(ws + layout.partial_ml) : nullptr;
  p.lse = attn_mass != nullptr ? reinterpret_cast<float*>(ws + layout.lse) : nullptr;
  p.error_flag = error_flag;
  const int64_t ky = static_cast<int64_t>(pool.num_kv_heads) * p.head_chunks;
  if (ky > 65535) return absl::InvalidArgumentError("PagedAttention: too many heads");
  // Grid limits of the second and third kernels, checked before anything is launched.
  if (splits > 1 && tokens * num_heads > 0x7fffffffLL) {
    return absl::InvalidArgumentError("PagedAttention: tokens * num_heads too large to split");
  }
  if (attn_mass != nullptr && (num_seqs > 65535 || num_heads > 65535)) {
    return absl::InvalidArgumentError(
        "PagedAttention: attn_mass supports at most 65535 sequences and heads");
  }
  // The 16-byte row loads need 16-byte aligned pool bases; otherwise the generic kernel.
  const bool aligned = reinterpret_cast<uintptr_t>(pool.k) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(pool.v) % 16 == 0;
  const dim3 grid(static_cast<unsigned>(tokens), static_cast<unsigned>(ky),
                  static_cast<unsigned>(splits));

  return DispatchDType(pool.dtype, [&](auto tag) -> absl::Status {
    using T = typename decltype(tag)::type;
    absl::Status st = DispatchHeadDim(aligned ? head_dim : 1, [&](auto hd) -> absl::Status {
      constexpr int kHeadDim = decltype(hd)::value;
      switch (tile) {
        case 1: DecodeKernel<T, kHeadDim, 1><<<grid, kThreads, 0, stream>>>(p); break;
        case 4: DecodeKernel<T, kHeadDim, 4><<<grid, kThreads, 0, stream>>>(p); break;
        default: DecodeKernel<T, kHeadDim, kMaxGroupTile><<<grid, kThreads, 0, stream>>>(p);
      }
      KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
      return absl::OkStatus();
    });
    if (!st.ok()) return st;
    if (splits > 1) {
      MergeSplitsKernel<T><<<static_cast<unsigned>(tokens * num_heads), kThreads, 0, stream>>>(
          p.partial_o, p.partial_ml, splits, num_heads, head_dim, out, out_stride, p.lse,
          error_flag);
      KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
    if (attn_mass != nullptr && max_cached > 0) {
      const dim3 mgrid(static_cast<unsigned>((max_cached + kMassThreads - 1) / kMassThreads),
                       static_cast<unsigned>(num_heads), static_cast<unsigned>(num_seqs));
      AttnMassKernel<T><<<mgrid, kMassThreads, 0, stream>>>(
          static_cast<const T*>(q), q_stride, tokens, num_heads, p.group, token_seq, token_pos,
          static_cast<const T*>(pool.k), p.num_slots, pool.num_kv_heads, pool.block_size, head_dim,
          seqs, p.lse, p.scale_log2, attn_mass, max_cached);
      KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
    return absl::OkStatus();
  });
}

}  // namespace internal

absl::Status PagedAttention(const void* q, int64_t q_stride, int64_t tokens, int32_t num_heads,
                            const int32_t* token_seq, const int32_t* token_pos,
                            const CudaKvPool& pool, const SeqKvView* seqs, int32_t num_seqs,
                            int32_t max_cached, float scale, void* out, int64_t out_stride,
                            float* attn_mass, void* workspace, size_t workspace_bytes,
                            int32_t* error_flag, const AttentionOptions& options,
                            cudaStream_t stream) {
  if (token_seq == nullptr) return absl::InvalidArgumentError("PagedAttention: null token_seq");
  return internal::PagedAttentionImpl(q, q_stride, tokens, num_heads, token_seq, nullptr, token_pos,
                                      pool, seqs, num_seqs, max_cached, scale, out, out_stride,
                                      attn_mass, workspace, workspace_bytes, error_flag, options,
                                      stream);
}

}  // namespace kvscope::kernels::cuda
