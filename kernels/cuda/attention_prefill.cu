// File: kernels/cuda/attention_prefill.cu
//
// Tensor-core prefill attention over the paged pool (attention_prefill.h).
//
// CTA: 4 warps, 64 query rows of one query head (16 per warp). Per K/V tile of kBc keys:
//   S = Q Kᵀ  (mma m16n8k16, Q and K fragments by ldmatrix from padded shared rows),
//   mask by positions, online softmax on the accumulator registers (each thread owns rows
//   lane/4 and lane/4 + 8 of its warp's 16), P rounded to the storage type and reused in
//   registers as the A operand of O += P V (V fragments by ldmatrix.trans).
// Shared rows are padded by 16 bytes, which makes the 8 row addresses of every ldmatrix fall
// in distinct bank groups.
#include "kernels/cuda/attention_prefill.h"

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/attention_decode.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dispatch.h"

namespace kvscope::kernels::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kBr = 64;  // query rows per CTA
constexpr float kLog2e = 1.4426950408889634f;

template <int kHeadDim>
struct PrefillTraits {
  static constexpr int kBc = kHeadDim <= 128 ? 64 : 32;  // keys per tile
  static constexpr int kRow = kHeadDim + 8;              // padded shared row, elements
  static constexpr int kChunks = kHeadDim / 8;           // 16-byte chunks per row
  // Shared memory: Q [kBr][kRow], K and V [2][kBc][kRow], kpos [2][kBc], qpos [kBr],
  // reduction scratch [kThreads / 32].
  static constexpr size_t kSmemBytes =
      2 * (static_cast<size_t>(kBr) * kRow + 4 * static_cast<size_t>(kBc) * kRow) +
      sizeof(int32_t) * (2 * kBc + kBr + kThreads / 32);
};

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(SmemAddr(smem)), "l"(gmem));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kN>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kN));
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(smem)));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(smem)));
}

// c += a · b for one m16n8k16 tile, float32 accumulators.
template <typename T>
__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats -> two storage elements in one 32-bit word (x in the low half).
template <typename T>
__device__ __forceinline__ uint32_t Pack2(float x, float y) {
  uint32_t r;
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __floats2half2_rn(x, y);
    memcpy(&r, &h, 4);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
    memcpy(&r, &h, 4);
  }
  return r;
}

struct PrefillParams {
  const void* q;
  int64_t q_stride;
  void* out;
  int64_t out_stride;
  const int32_t* seq_q_start;
  const int32_t* token_pos;
  const void* pool_k;
  const void* pool_v;
  int64_t num_slots;
  int32_t num_kv_heads;
  int32_t block_size;
  int32_t num_heads;
  int32_t group;
  const SeqKvView* seqs;
  float scale_log2;
  int32_t* error_flag;
};

// grid: (ceil(max_q_per_seq / kBr), num_heads, num_seqs); block: kThreads; dynamic shared
// memory PrefillTraits<kHeadDim>::kSmemBytes.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kThreads) PrefillKernel(const PrefillParams p) {
  using Tr = PrefillTraits<kHeadDim>;
  constexpr int kBc = Tr::kBc;
  constexpr int kRow = Tr::kRow;
  constexpr int kNT = kBc / 8;       // score n-tiles per warp
  constexpr int kDT = kHeadDim / 8;  // output n-tiles per warp
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* s_q = reinterpret_cast<T*>(smem_raw);
  T* s_k = s_q + kBr * kRow;                                           // [2][kBc][kRow]
  T* s_v = s_k + 2 * kBc * kRow;                                       // [2][kBc][kRow]
  int32_t* s_kpos = reinterpret_cast<int32_t*>(s_v + 2 * kBc * kRow);  // [2][kBc]
  int32_t* s_qpos = s_kpos + 2 * kBc;                                  // [kBr]
  int32_t* s_red = s_qpos + kBr;                                       // [kThreads / 32]

  const int32_t s = blockIdx.z;
  const int32_t h = blockIdx.y;
  const int32_t g = h / p.group;
  const int64_t q_begin = p.seq_q_start[s];
  const int64_t q0 = q_begin + static_cast<int64_t>(blockIdx.x) * kBr;
  const int64_t q_end = p.seq_q_start[s + 1];
  if (q0 >= q_end) return;  // uniform: this tile lies past the sequence's queries
  const int32_t rows = static_cast<int32_t>(q_end - q0 < kBr ? q_end - q0 : kBr);
  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;

  const SeqKvView seq = p.seqs[s];
  const int64_t list_off = seq.head_stride > 0 ? g * seq.head_stride : 0;
  const int32_t* slots = seq.slots + list_off;
  const int32_t* positions = seq.positions + list_off;
  const int32_t n = seq.num_cached;

  // ---- Q tile (cp.async group 0) and query positions.
  const T* qg = static_cast<const T*>(p.q);
  for (int idx = tid; idx < kBr * Tr::kChunks; idx += kThreads) {
    const int r = idx / Tr::kChunks;
    const int c = idx % Tr::kChunks;
    T* dst = s_q + r * kRow + c * 8;
    if (r < rows) {
      CpAsync16(dst, qg + (q0 + r) * p.q_stride + static_cast<int64_t>(h) * kHeadDim + c * 8);
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    }
  }
  CpAsyncCommit();
  int32_t my_qpos = INT_MIN;
  if (tid < kBr) {
    my_qpos = tid < rows ? p.token_pos[q0 + tid] : INT_MIN;
    s_qpos[tid] = my_qpos;
  }
  // Largest query position of the CTA.
  int32_t red = my_qpos;
#pragma unroll
  for (int o = 16; o >= 1; o /= 2) red = max(red, __shfl_xor_sync(0xffffffffu, red, o));
  if (lane == 0) s_red[warp] = red;
  __syncthreads();
  int32_t cta_max_qpos = s_red[0];
#pragma unroll
  for (int w = 1; w < kThreads / 32; ++w) cta_max_qpos = max(cta_max_qpos, s_red[w]);
  __syncthreads();
  // Keys past the last listed key any row can see are never needed.
  int32_t last = -1;
  for (int32_t j = tid; j < n; j += kThreads) {
    if (positions[j] <= cta_max_qpos) last = j;
  }
#pragma unroll
  for (int o = 16; o >= 1; o /= 2) last = max(last, __shfl_xor_sync(0xffffffffu, last, o));
  if (lane == 0) s_red[warp] = last;
  __syncthreads();
  int32_t n_eff = s_red[0];
#pragma unroll
  for (int w = 1; w < kThreads / 32; ++w) n_eff = max(n_eff, s_red[w]);
  n_eff += 1;
  const int32_t num_tiles = (n_eff + kBc - 1) / kBc;

  const T* pool_k = static_cast<const T*>(p.pool_k);
  const T* pool_v = static_cast<const T*>(p.pool_v);
  const int64_t head_off = static_cast<int64_t>(g) * p.block_size * kHeadDim;
  const int64_t block_stride = static_cast<int64_t>(p.num_kv_heads) * p.block_size * kHeadDim;

  auto load_tile = [&](int stage, int32_t tile) {
    T* sk = s_k + stage * kBc * kRow;
    T* sv = s_v + stage * kBc * kRow;
    for (int idx = tid; idx < kBc * Tr::kChunks; idx += kThreads) {
      const int r = idx / Tr::kChunks;
      const int c = idx % Tr::kChunks;
      const int32_t j = tile * kBc + r;
      const int64_t slot = j < n_eff ? slots[j] : -1;
      const bool valid = slot >= 0 && slot < p.num_slots;
      if (j < n_eff && !valid && c == 0 && p.error_flag) {
        atomicOr(p.error_flag, kErrorSlotOutOfRange);
      }
      if (valid) {
        const int64_t row =
            (slot / p.block_size) * block_stride + head_off + (slot % p.block_size) * kHeadDim;
        CpAsync16(sk + r * kRow + c * 8, pool_k + row + c * 8);
        CpAsync16(sv + r * kRow + c * 8, pool_v + row + c * 8);
      } else {
        // Zeros, not garbage: a masked probability of 0 times a NaN would still be NaN.
        *reinterpret_cast<uint4*>(sk + r * kRow + c * 8) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(sv + r * kRow + c * 8) = make_uint4(0, 0, 0, 0);
      }
    }
    for (int r = tid; r < kBc; r += kThreads) {
      const int32_t j = tile * kBc + r;
      const int64_t slot = j < n_eff ? slots[j] : -1;
      s_kpos[stage * kBc + r] =
          (slot >= 0 && slot < p.num_slots) ? positions[j] : INT_MAX;  // INT_MAX: masked
    }
  };

  // This thread's rows within the warp's 16 and their positions.
  const int r0 = warp * 16 + lane / 4;
  const int r1 = r0 + 8;
  float o_acc[kDT][4];
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) o_acc[dt][e] = 0.f;
  }
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

  if (num_tiles > 0) load_tile(0, 0);
  CpAsyncCommit();
  __syncthreads();  // s_qpos visible
  const int32_t qp0 = s_qpos[r0];
  const int32_t qp1 = s_qpos[r1];
  int32_t warp_max_qpos = max(qp0, qp1);
#pragma unroll
  for (int o = 16; o >= 1; o /= 2) {
    warp_max_qpos = max(warp_max_qpos, __shfl_xor_sync(0xffffffffu, warp_max_qpos, o));
  }

  for (int32_t tile = 0; tile < num_tiles; ++tile) {
    const int stage = tile & 1;
    if (tile + 1 < num_tiles) {
      load_tile(stage ^ 1, tile + 1);
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();

    const int32_t* kpos = s_kpos + stage * kBc;
    int32_t tile_min = INT_MAX;
#pragma unroll
    for (int i = lane; i < kBc; i += 32) tile_min = min(tile_min, kpos[i]);
#pragma unroll
    for (int o = 16; o >= 1; o /= 2)
      tile_min = min(tile_min, __shfl_xor_sync(0xffffffffu, tile_min, o));

    if (tile_min <= warp_max_qpos) {  // warp-uniform: some row of this warp sees a key
      const T* sk = s_k + stage * kBc * kRow;
      const T* sv = s_v + stage * kBc * kRow;
      // ---- S = Q Kᵀ for the warp's 16 rows.
      float sc[kNT][4];
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[nt][e] = 0.f;
      }
      const int mat = lane / 8;
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        uint32_t a[4];
        LdMatrixX4(a,
                   s_q + (warp * 16 + (mat % 2) * 8 + lane % 8) * kRow + kk * 16 + (mat / 2) * 8);
#pragma unroll
        for (int np = 0; np < kNT / 2; ++np) {
          uint32_t b[4];
          LdMatrixX4(b, sk + (np * 16 + (mat / 2) * 8 + lane % 8) * kRow + kk * 16 + (mat % 2) * 8);
          Mma<T>(sc[2 * np], a, b[0], b[1]);
          Mma<T>(sc[2 * np + 1], a, b[2], b[3]);
        }
      }
      // ---- Mask, online softmax (log2 domain).
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = nt * 8 + (lane % 4) * 2 + (e & 1);
          const int32_t qp = e < 2 ? qp0 : qp1;
          sc[nt][e] = kpos[col] <= qp ? sc[nt][e] * p.scale_log2 : -INFINITY;
        }
        mx0 = fmaxf(mx0, fmaxf(sc[nt][0], sc[nt][1]));
        mx1 = fmaxf(mx1, fmaxf(sc[nt][2], sc[nt][3]));
      }
#pragma unroll
      for (int o = 1; o <= 2; o *= 2) {
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, o));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o));
      }
      const float new0 = fmaxf(m0, mx0), new1 = fmaxf(m1, mx1);
      // A row that has seen nothing yet keeps m = -inf; subtracting 0 keeps exp2 at 0.
      const float use0 = new0 == -INFINITY ? 0.f : new0;
      const float use1 = new1 == -INFINITY ? 0.f : new1;
      const float alpha0 = exp2f(m0 - use0), alpha1 = exp2f(m1 - use1);
      m0 = new0;
      m1 = new1;
      float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
        sc[nt][0] = exp2f(sc[nt][0] - use0);
        sc[nt][1] = exp2f(sc[nt][1] - use0);
        sc[nt][2] = exp2f(sc[nt][2] - use1);
        sc[nt][3] = exp2f(sc[nt][3] - use1);
        sum0 += sc[nt][0] + sc[nt][1];
        sum1 += sc[nt][2] + sc[nt][3];
      }
      l0 = l0 * alpha0 + sum0;  // per-thread partial sums; the quad is summed at the end
      l1 = l1 * alpha1 + sum1;
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        o_acc[dt][0] *= alpha0;
        o_acc[dt][1] *= alpha0;
        o_acc[dt][2] *= alpha1;
        o_acc[dt][3] *= alpha1;
      }
      // ---- O += P V.
#pragma unroll
      for (int kk = 0; kk < kBc / 16; ++kk) {
        uint32_t a[4];
        a[0] = Pack2<T>(sc[2 * kk][0], sc[2 * kk][1]);
        a[1] = Pack2<T>(sc[2 * kk][2], sc[2 * kk][3]);
        a[2] = Pack2<T>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
        a[3] = Pack2<T>(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
        for (int dp = 0; dp < kDT / 2; ++dp) {
          uint32_t b[4];
          LdMatrixX4Trans(
              b, sv + (kk * 16 + (mat % 2) * 8 + lane % 8) * kRow + dp * 16 + (mat / 2) * 8);
          Mma<T>(o_acc[2 * dp], a, b[0], b[1]);
          Mma<T>(o_acc[2 * dp + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // the stage is overwritten by the next iteration's load
  }

  CpAsyncWait<0>();  // nothing left in flight (the Q group when there were no tiles)

  // ---- Normalise and store.
#pragma unroll
  for (int o = 1; o <= 2; o *= 2) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, o);
    l1 += __shfl_xor_sync(0xffffffffu, l1, o);
  }
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f;
  const float inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
  if (lane % 4 == 0 && p.error_flag && ((r0 < rows && l0 <= 0.f) || (r1 < rows && l1 <= 0.f))) {
    atomicOr(p.error_flag, kErrorNoVisibleKey);
  }
  T* out = static_cast<T*>(p.out);
  const int64_t col0 = static_cast<int64_t>(h) * kHeadDim + (lane % 4) * 2;
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt) {
    if (r0 < rows) {
      *reinterpret_cast<uint32_t*>(out + (q0 + r0) * p.out_stride + col0 + dt * 8) =
          Pack2<T>(o_acc[dt][0] * inv0, o_acc[dt][1] * inv0);
    }
    if (r1 < rows) {
      *reinterpret_cast<uint32_t*>(out + (q0 + r1) * p.out_stride + col0 + dt * 8) =
          Pack2<T>(o_acc[dt][2] * inv1, o_acc[dt][3] * inv1);
    }
  }
}

template <typename T, int kHeadDim>
absl::Status LaunchPrefill(const PrefillParams& p, dim3 grid, cudaStream_t stream) {
  constexpr size_t kSmem = PrefillTraits<kHeadDim>::kSmemBytes;
  // Raising the dynamic shared-memory limit is per function and device; it is cheap enough
  // to repeat on every launch.
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(PrefillKernel<T, kHeadDim>,
                                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                    static_cast<int>(kSmem)));
  PrefillKernel<T, kHeadDim><<<grid, kThreads, kSmem, stream>>>(p);
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace

absl::Status PrefillAttention(const void* q, int64_t q_stride, int64_t tokens, int32_t num_heads,
                              const int32_t* seq_q_start, const int32_t* token_pos,
                              const CudaKvPool& pool, const SeqKvView* seqs, int32_t num_seqs,
                              int32_t max_q_per_seq, float scale, void* out, int64_t out_stride,
                              int32_t* error_flag, const PrefillOptions& options,
                              cudaStream_t stream) {
  if (tokens < 0 || num_seqs < 0 || max_q_per_seq < 0) {
    return absl::InvalidArgumentError(
        "PrefillAttention: negative tokens, num_seqs or max_q_per_seq");
  }
  if (tokens == 0 || max_q_per_seq == 0) return absl::OkStatus();
  if (absl::Status st = CheckCudaKvPool(pool, "PrefillAttention"); !st.ok()) return st;
  if (num_heads <= 0 || num_heads % pool.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("PrefillAttention: num_heads ", num_heads,
                                                   " is not a positive multiple of num_kv_heads ",
                                                   pool.num_kv_heads));
  }
  const int32_t head_dim = pool.head_dim;
  const int64_t row = static_cast<int64_t>(num_heads) * head_dim;
  if (q_stride < row || out_stride < row) {
    return absl::InvalidArgumentError(absl::StrCat("PrefillAttention: q_stride ", q_stride,
                                                   " / out_stride ", out_stride,
                                                   " < num_heads * head_dim = ", row));
  }
  if (q == nullptr || out == nullptr || seq_q_start == nullptr || token_pos == nullptr ||
      seqs == nullptr || num_seqs == 0) {
    return absl::InvalidArgumentError(
        "PrefillAttention: null q, out, seq_q_start, token_pos or seqs, or no sequences");
  }
  if (num_seqs > 65535 || num_heads > 65535) {
    return absl::InvalidArgumentError("PrefillAttention: more than 65535 sequences or heads");
  }
  if (head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("PrefillAttention: head_dim ", head_dim, " > ", kMaxHeadDim));
  }
  const size_t esize = DTypeSize(pool.dtype);
  auto aligned16 = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const bool tensor_cores = !options.force_general && pool.dtype != DType::kF32 &&
                            (head_dim == 64 || head_dim == 128 || head_dim == 256) &&
                            aligned16(q) && aligned16(out) && aligned16(pool.k) &&
                            aligned16(pool.v) && (q_stride * esize) % 16 == 0 &&
                            (out_stride * esize) % 16 == 0;
  if (!tensor_cores) {
    AttentionOptions general;
    general.num_splits = 1;  // no workspace needed
    return internal::PagedAttentionImpl(q, q_stride, tokens, num_heads, /*token_seq=*/nullptr,
                                        seq_q_start, token_pos, pool, seqs, num_seqs,
                                        /*max_cached=*/0, scale, out, out_stride,
                                        /*attn_mass=*/nullptr, nullptr, 0, error_flag, general,
                                        stream);
  }
  PrefillParams p{};
  p.q = q;
  p.q_stride = q_stride;
  p.out = out;
  p.out_stride = out_stride;
  p.seq_q_start = seq_q_start;
  p.token_pos = token_pos;
  p.pool_k = pool.k;
  p.pool_v = pool.v;
  p.num_slots = pool.num_slots();
  p.num_kv_heads = pool.num_kv_heads;
  p.block_size = pool.block_size;
  p.num_heads = num_heads;
  p.group = num_heads / pool.num_kv_heads;
  p.seqs = seqs;
  p.scale_log2 = scale * kLog2e;
  p.error_flag = error_flag;
  const dim3 grid(static_cast<unsigned>((max_q_per_seq + kBr - 1) / kBr),
                  static_cast<unsigned>(num_heads), static_cast<unsigned>(num_seqs));
  auto by_dim = [&](auto tag) -> absl::Status {
    using T = typename decltype(tag)::type;
    switch (head_dim) {
      case 64:
        return LaunchPrefill<T, 64>(p, grid, stream);
      case 128:
        return LaunchPrefill<T, 128>(p, grid, stream);
      default:
        return LaunchPrefill<T, 256>(p, grid, stream);
    }
  };
  if (pool.dtype == DType::kF16) return by_dim(TypeTag<__half>{});
  return by_dim(TypeTag<__nv_bfloat16>{});
}

}  // namespace kvscope::kernels::cuda
