// File: engine/cuda/gpu_infinigen.h
//
// The `infinigen` strategy (kvcache/infinigen_kv_manager.h, kv-strategies.md §4) inside the
// GPU forward pass of one rank (engine/cuda/gpu_model_shard.h): the device half of what
// engine/infinigen_forward.h and InfinigenKvCache::Speculate do on the CPU, with the same
// numbers of tokens selected, so that the selections equal the CPU engine's.
//
// Where the KV lives (per rank; the host slots are the host cache's numbering):
//   dense layers (< dense_layers)  the shard's device pool, every token at its host slot
//                                  (prefill and decode attend there, as in any cache).
//   offloaded layers (>= dense)    no K/V on the device between steps (the reference's
//                                  "KV cache 100 % CPU"): the shard allocates no device pool
//                                  for them (GpuShardOptions::kv_layers = dense_layers).
//     host pool (pinned, mapped)   every token's K/V at its host slot, written by the device
//                                  straight into mapped memory in the layer's AfterWriteKv
//                                  (the reference's store_cache); the source of every gather.
//     working pool (device)        one per shard, shared by the offloaded layers, numbered
//                                  per step as engine/infinigen_offload_plan.h lays out: the
//                                  two prefetch buffers (the layer's parity picks one), the
//                                  step's new K/V (written there too), and the earlier
//                                  tokens of sequences that attend to every token (a prefill
//                                  chunk after the first), gathered from the host pool in
//                                  each offloaded layer by zero-copy reads. Grows with the
//                                  largest step; reported as workspace.
//     partial keys (device)        [host slots][kv_heads][partial_dim] of the dtype per
//                                  offloaded layer (WritePartialKeys, from the working
//                                  pool's fresh rows), about partial_ratio / 2 of a layer's
//                                  K/V.
// The working pool is outside the KV budget (as the activation workspace): prefetch buffers
// (2 x the step's sparse sequences' max_num_kv), the step's tokens and a chunked prefill's
// earlier tokens, one layer's worth each; the dense pool is sized for the manager's
// CapacityTokens, which already count the prefetch buffers as tokens, so the device KV
// memory overshoots the budget by those (small) terms.
// Weights: OPT has the skew folded into this rank's q and k rows (the CPU's folded matrices,
// InfinigenShard, uploaded as the shard's fused qkv) plus a partial query weight per layer
// [heads * d', hidden]; Llama keeps its weights and skews q and k after RoPE on the device
// (SkewHeads with A per head).
//
// A decode step with sparse sequences (InfinigenKvCache::SpeculationRows non-empty), during
// layer l for layer l + 1 (dense_layers <= l + 1 < num_layers), on the shard's stream:
//   partial query   rows of layer l's attention input at the speculation rows -> OPT: the
//                   partial weight GEMM; Llama: q GEMM, RoPE, skew, column pick (float32);
//   speculation     InfinigenPartialScores over the candidates the host cache lists
//                   (SpeculationCandidates: every earlier live token), InfinigenSpeculatedCount
//                   (alpha = the manager's), InfinigenTopK (kernels/cuda/infinigen_ops.h);
//   views           the layer's attention lists on the device: per KV head the n' prefetch
//                   slots (ascending position) then the new token's working slot;
//                   num_cached = n' + 1;
//   gather          the selected rows' K/V from the host pool into the layer's prefetch
//                   buffer in the working pool: zero copy (default: a kernel reads mapped
//                   pinned memory, only the selected rows) or the copy engine (counts and
//                   indices come back to the host, which packs the rows into pinned staging
//                   for one cudaMemcpyAsync: GatherCopyEngine; synchronizes the stream once
//                   per layer).
// Every offloaded layer attends in the working pool (PagedAttention, or PrefillAttention in
// a step with prefills): sparse sequences over their views above, the others over their
// whole history (fresh rows plus gathered earlier rows). After the step (FinishStep) the
// counts and indices come back to the host and are recorded in the cache
// (InfinigenKvCache::RecordSpeculation: SelectedPositions, counters, eviction counts), so
// the host bookkeeping is the CPU engine's.
//
// Memory accounting (GpuMemoryReport): kv_pool_bytes holds the dense layers only;
// pinned_host_bytes includes the host pool and the copy-engine staging; h2d_bytes adds the
// K/V bytes of the selected rows and of the gathered earlier rows; d2h_bytes the K/V rows
// written to the host pool and the selections read back; workspace_bytes adds the working
// pool, the partial keys and the step buffers.
// Not done yet:
//   - the attention-mass samples (InfinigenKvCache::SampleAttentionMass needs the host K
//     pool): mass_samples stays 0 on the GPU;
//   - no overlap: speculation and the gather run on the shard's stream between layer l's
//     norm and its QKV GEMM (the reference overlaps them with layer l's attention and MLP);
//   - the earlier rows of a chunked prefill are gathered by zero-copy reads only (the
//     copy-engine option applies to the selected rows).
//
// Thread-safety: one per shard, used by the shard's thread.
#ifndef KVSCOPE_ENGINE_CUDA_GPU_INFINIGEN_H_
#define KVSCOPE_ENGINE_CUDA_GPU_INFINIGEN_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/dtype.h"
#include "engine/infinigen_forward.h"
#include "engine/infinigen_offload_plan.h"
#include "engine/weights.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/infinigen_ops.h"
#include "kernels/cuda/kv_pool.h"
#include "kernels/ops.h"
#include "kvcache/infinigen_kv_cache.h"
#include "kvcache/infinigen_skew.h"
#include "kvcache/kv_cache.h"

namespace kvscope::engine::cuda {

// How the selected rows reach the device.
enum class InfinigenGather {
  kZeroCopy,    // a kernel reads the mapped pinned host pool (44-51 GB/s on the H100)
  kCopyEngine,  // host packing into pinned staging + one cudaMemcpyAsync (5-9 GB/s)
};

// What GpuInfinigen reads of its shard (pointers owned by the shard, valid while it lives).
struct GpuInfinigenShardView {
  DType dtype = DType::kBF16;
  bool llama = false;
  int64_t hidden = 0, head_dim = 0;
  int64_t heads = 0, kv_heads = 0, head_begin = 0, kv_head_begin = 0;
  int64_t qkv_w = 0;  // row width of the fused q|k|v activations
  kernels::cuda::Gemm* gemm = nullptr;
  std::vector<kernels::cuda::CudaKvPool> pools;  // per layer, the device pools
  std::vector<const void*> q_weight;             // per layer [heads·d, hidden] (fused qkv)
  std::vector<const void*> q_bias;               // per layer [heads·d] or null
  const float* inv_freq = nullptr;
  int64_t rot_dim = 0;
  float rope_scaling = 1.0f;
  int32_t* error_flag = nullptr;  // the shard's device error word (kv_cache_ops.h)
};

class GpuInfinigen {
 public:
  // The skew-folded q|k|v rows of this rank for OPT (q: [heads·d, hidden], k, v as the
  // shard's fused matrix) and its bias (empty when the model has none), as float32; for
  // Llama, empty (the weights stay as they are). The shard uploads them in place of its qkv.
  struct FoldedQkv {
    std::vector<std::vector<float>> weight, bias;  // per layer
  };
  // `folded`: the CPU's InfinigenShard of this rank (built once, also passed to Create).
  static FoldedQkv Fold(const ModelWeights& w, const InfinigenShard& folded,
                        const GpuInfinigenShardView& shard);

  // Uploads the partial weights / skewing matrices and columns, allocates the partial keys
  // and the mapped pinned host pool (layers >= dense_layers, the device pools' slots).
  // `skew` must outlive this object; `folded` (OPT: its partial query weights) is only read
  // here. InvalidArgument when the skew does not match.
  static absl::StatusOr<std::unique_ptr<GpuInfinigen>> Create(
      const ModelWeights& w, const kvcache::InfinigenSkew& skew, const InfinigenShard& folded,
      int32_t dense_layers, InfinigenGather gather, GpuInfinigenShardView shard,
      cudaStream_t stream);

  const kvcache::InfinigenSkew* skew() const { return &skew_; }
  int32_t dense_layers() const { return dense_layers_; }

  // Host side of a step (after cache.PrepareStep): the working-pool numbering of the
  // offloaded layers (engine/infinigen_offload_plan.h), the candidates and prefetch slots of
  // the sparse sequences and every offloaded layer's views, uploaded in one copy; grows the
  // working pool when the step needs more. Per step sequence (step order): host_views =
  // cache.SeqViews(0) (HOST lists, shared by all heads), dev_views = the same views as the
  // shard uploaded them (device pointers), steps = what the cache was prepared with,
  // first_rows = its first token row; new_slots = cache.NewTokenSlots() (host).
  // InvalidArgument when the spans disagree in length.
  absl::Status PrepareStep(kvcache::InfinigenKvCache& cache,
                           absl::Span<const kernels::SeqKvView> host_views,
                           absl::Span<const kernels::SeqKvView> dev_views,
                           absl::Span<const kvcache::SeqStep> steps,
                           absl::Span<const int32_t> first_rows,
                           absl::Span<const int32_t> new_slots);
  // Whether layer `layer` is offloaded: it has no device pool of the shard and attends in
  // working_pool() over Views(layer) (valid after PrepareStep).
  bool Offloaded(int64_t layer) const { return layer >= dense_layers_ && layer < num_layers_; }
  const kernels::cuda::CudaKvPool& working_pool() const { return working_; }
  // The views (device) of offloaded layer `layer` this step, one per step sequence.
  const kernels::SeqKvView* Views(int64_t layer) const;
  // During layer `layer`, from its attention input `normed` ([tokens, hidden]): speculates
  // for layer + 1 and gathers its rows (nothing when layer + 1 is not speculated).
  absl::Status Speculate(int64_t layer, const void* normed, int64_t tokens);
  // Llama family: q and k (the fused activations, row stride shard.qkv_w) multiplied by the
  // layer's A per head after RoPE, in every layer (as the CPU). Nothing for OPT (folded).
  absl::Status SkewAfterRope(int64_t layer, void* q, void* k, int64_t tokens);
  // In place of the shard's WriteKv for an offloaded layer (nothing for a dense one): the new
  // rows go to the host pool at their host slots and to the working pool at their fresh
  // slots, their partial keys are written, and the step's earlier rows of non-sparse
  // sequences are gathered from the layer's host pool into the working pool. k, v: the fused
  // activations (row stride shard.qkv_w); slots: device [tokens] host slots, -1 = no write;
  // written_rows: rows that write (for the d2h count).
  absl::Status AfterWriteKv(int64_t layer, const void* k, const void* v, const int32_t* slots,
                            int64_t tokens, int64_t written_rows);
  // After the step's device work: records the selections in the cache.
  absl::Status FinishStep(kvcache::InfinigenKvCache& cache);

  // Accounting, added into the shard's GpuMemoryReport.
  int64_t pinned_bytes() const;
  int64_t device_bytes() const;
  // Adds the PCIe traffic since the last call to *h2d / *d2h.
  void TakeTraffic(int64_t* h2d, int64_t* d2h) {
    *h2d += h2d_bytes_;
    *d2h += d2h_bytes_;
    h2d_bytes_ = d2h_bytes_ = 0;
  }

 private:
  GpuInfinigen(const kvcache::InfinigenSkew& skew, int32_t dense_layers, InfinigenGather gather,
               GpuInfinigenShardView shard, cudaStream_t stream);
  // Whether layer `layer`'s views this step come from a selection (speculated for).
  bool Speculated(int64_t layer) const { return num_sparse_ > 0 && Offloaded(layer); }
  absl::Status Init(const ModelWeights& w, const InfinigenShard& folded);
  absl::Status GatherCopyEngine(int64_t layer);

  // Offsets (int32 elements) of one step's arrays inside the step buffer.
  struct Layout {
    int64_t spec_rows = 0, spec_pos = 0, max_num_kv = 0, new_slot = 0, new_pos = 0;
    int64_t view_index = 0;
    int64_t fresh = 0, lists = 0, history = 0;  // the offload plan (history: GatherRows)
    int64_t dst_base = 0, num_cands = 0, cand_rows = 0, cand_pos = 0;  // per layer
    int64_t view_slots = 0, view_pos = 0;                              // per layer (device)
    int64_t counts = 0, selected = 0;                                  // per layer (device)
    int64_t views = 0;  // byte offset of the SeqKvView arrays (per layer)
    int64_t total_bytes = 0;
  };
  int64_t LayerIndex(int64_t layer) const { return layer - dense_layers_; }

  const kvcache::InfinigenSkew& skew_;
  const int32_t dense_layers_;
  const int32_t num_layers_;
  const InfinigenGather gather_;
  const GpuInfinigenShardView shard_;
  const cudaStream_t stream_;
  int32_t partial_dim_ = 0;
  double alpha_ = 0;

  // Weights and artefacts (device), per speculated layer (index layer - dense_layers).
  std::vector<kernels::cuda::DeviceBuffer> qp_weight_, qp_bias_;  // OPT partial weights
  kernels::cuda::DeviceBuffer a_q_, a_k_;        // Llama: float32 [layers][heads|kv][d][d]
  kernels::cuda::DeviceBuffer columns_q_;        // int32 [layers][heads][d'] (Llama pick)
  kernels::cuda::DeviceBuffer identity_columns_; // int32 [heads][d'] = c (OPT pick)
  kernels::cuda::DeviceBuffer columns_k_;        // int32 [layers][kv_heads][d']
  kernels::cuda::DeviceBuffer partial_keys_;     // [layers][slots][kv_heads][d'] of dtype
  int64_t partial_layer_bytes_ = 0;
  // Host pool: per speculated layer K then V, each [blocks][kv_heads][block][d] of dtype.
  kernels::cuda::PinnedBuffer host_pool_;
  std::vector<kernels::cuda::CudaKvPool> host_pools_;    // host addresses
  std::vector<kernels::cuda::CudaKvPool> mapped_pools_;  // device addresses of the same

  // Working pool (device): K and V of the offloaded layers' step, grown on demand.
  kernels::cuda::DeviceBuffer working_k_, working_v_;
  kernels::cuda::CudaKvPool working_;
  int64_t num_history_rows_ = 0;  // GatherRows of earlier tokens per offloaded layer
  bool prepared_ = false;         // views valid (PrepareStep succeeded)

  // Step state.
  int32_t num_sparse_ = 0;       // S
  int32_t num_step_seqs_ = 0;
  int64_t cand_stride_ = 0;
  int32_t sel_stride_ = 0;       // >= every max_num_kv of the step's sparse sequences
  int32_t view_stride_ = 0;      // sel_stride_ + 1
  Layout lay_;
  kernels::cuda::PinnedBuffer step_host_;
  kernels::cuda::DeviceBuffer step_dev_;
  std::vector<int32_t> cand_pos_host_;   // [layers][S][kv][cand_stride] (a copy for FinishStep)
  std::vector<int32_t> cand_rows_host_;  // same, host slots (copy-engine rows)
  // Scratch (device): gathered rows, q rows, partial q, scores.
  kernels::cuda::DeviceBuffer x_rows_, q_rows_, partial_q_, scores_;
  // Copy engine: selections read back, pinned staging and the device packed buffer.
  kernels::cuda::PinnedBuffer readback_;
  kernels::cuda::PinnedBuffer gather_staging_;
  kernels::cuda::DeviceBuffer gather_packed_;
  std::vector<kernels::cuda::GatherRow> gather_rows_;

  int64_t h2d_bytes_ = 0;
  int64_t d2h_bytes_ = 0;
};

}  // namespace kvscope::engine::cuda

#endif  // KVSCOPE_ENGINE_CUDA_GPU_INFINIGEN_H_
