// File: engine/cuda/gpu_model_shard.h
//
// The forward pass of one tensor-parallel rank on a CUDA device: the contract of
// engine::ModelShard::Forward (engine/model.h) with the weights, the activations and the KV
// pool in device memory.
//
//   - Weights: this rank's Megatron slices of the host ModelWeights (float32), converted once
//     to `GpuShardOptions::dtype` (bf16, fp16 or f32) and uploaded. q|k|v are fused into one
//     [q + 2 kv, hidden] matrix and Llama's gate|up into one [2 inter, hidden] matrix (one
//     GEMM each); o and down are uploaded as this rank's contiguous column slices. Rank 0
//     alone holds lm_head (shared with the embedding table when tied) and project_out.
//   - KV pool: one CudaKvPool per layer (kernels/cuda/kv_cache_ops.h), K and V each
//     [num_kv_blocks][kv_heads][block_size][head_dim] of `dtype`: the same block layout and
//     slot numbering as the host KvCache's Pool(l), so the cache's bookkeeping (PrepareStep,
//     NewTokenSlots, SeqViews) is used unchanged and only its host pool memory goes unused.
//     Its size is `num_kv_blocks` when given, otherwise PlanGpuMemory (engine/
//     gpu_memory_plan.h) over cudaMemGetInfo, weights and the activation workspace.
//   - One step: the token ids, positions, new-token slots and the sequences' slot/position
//     lists are packed into one pinned staging buffer and uploaded with ONE host-to-device
//     copy; every kernel then runs on this shard's stream; partial sums are all-reduced
//     through a DeviceCommunicator (same sharding and reduction points as the CPU shard);
//     rank 0 gathers the logit rows, applies the final norm and lm_head on the device and
//     copies float32 logits to the host. Forward returns after the stream has drained.
//   - Attention: a step whose sequences have at most one new token each runs the paged
//     decode kernel (PagedAttention); any other step runs PrefillAttention (causal, paged,
//     tensor cores for bf16/fp16 with head_dim 64/128/256), except with h2o, whose steps all
//     run PagedAttention (the only kernel with the attention-mass output).
//
// Strategies. Supported: every cache whose K/V stay where WriteKv put them and whose
// attention needs no mass output: FullKvCache and ManagedKvCache (paged, contiguous).
// Block transfers a KvManager plans (swap out / swap in through a pinned host pool, see
// EnableHostPool; copy-on-write copies) must be mirrored on the device with
// ApplyBlockTransfers before the step's Forward.
// h2o and streaming (EvictingKvCache, both positions modes) through GpuEvictingState
// (gpu_evicting_state.h): the host manager plans, the per-(layer, sequence, KV head) entry
// lists live on the device during Forward (one upload, one download per step, no host sync
// per layer), each layer's attention reads its own per-head views, and after it the strategy
// kernels make EvictingKvCache::OnAttention's decisions and K/V moves in the device pool.
// h2o runs every step (prefill included) through PagedAttention with the attention-mass
// output; these steps never use CUDA graphs (the per-layer decision kernels vary per step),
// even with cuda_graphs set. Kept sets equal the CPU engine's as long as the float32
// attention masses order the same way (near-ties in h2o scores may break differently).
// infinigen (InfinigenKvCache) through GpuInfinigen (gpu_infinigen.h), after
// EnableInfinigen (GpuEngine::Create calibrates and enables it): skewed q/k (OPT: folded
// into the uploaded weights; Llama: after RoPE), partial keys and speculation on the device;
// layers >= dense_layers are offloaded: their K/V live in a mapped pinned host pool, and
// each step they attend in GpuInfinigen's working pool, where the selected rows are gathered
// (zero copy by default, GpuShardOptions::infinigen_gather) next to the step's new rows (and
// a chunked prefill's earlier rows). The shard then needs a device pool for the dense layers
// only (GpuShardOptions::kv_layers); per-layer views built on the device; no CUDA graphs.
// Refused with Unimplemented: evicting caches with a policy other than h2o / streaming.
//
// Thread-safety: not thread-safe; one shard per rank, driven by one thread at a time (the
// thread may change between calls: Forward makes the shard's device current).
#ifndef KVSCOPE_ENGINE_CUDA_GPU_MODEL_SHARD_H_
#define KVSCOPE_ENGINE_CUDA_GPU_MODEL_SHARD_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/dtype.h"
#include "engine/cuda/device_communicator.h"
#include "engine/cuda/gpu_infinigen.h"
#include "engine/gpu_memory_plan.h"
#include "engine/model.h"
#include "engine/weights.h"
#include "kernels/cuda/attention_decode.h"
#include "kernels/cuda/kv_cache_ops.h"
#include "kvcache/kv_cache.h"
#include "kvcache/kv_manager.h"

namespace kvscope::engine::cuda {

class GpuEvictingState;  // gpu_evicting_state.h
class GpuInfinigen;      // gpu_infinigen.h

struct GpuShardOptions {
  // Storage type of weights, activations and the KV pool (arithmetic is float32 inside
  // every kernel and GEMM).
  DType dtype = DType::kBF16;
  // CUDA device ordinal of this rank.
  int device = 0;
  // Tokens per KV block; must equal the block size of the host KvCache's Pool(l).
  int32_t block_size = 16;
  // > 0: exactly this many blocks per layer (no memory plan is made). 0: as PlanGpuMemory
  // gives, from gpu_memory_utilization and kv_bytes. The planned size assumes this process
  // has the device to itself; several ranks on one device must set num_kv_blocks.
  int64_t num_kv_blocks = 0;
  double gpu_memory_utilization = 0.9;
  int64_t kv_bytes = 0;  // requested KV pool bytes over all layers, K and V (0 = all that fits)
  // Activations are allocated for steps of up to this many tokens (the workspace the plan
  // reserves); a larger step grows them (ResourceExhausted if the device is full).
  int64_t max_tokens_per_step = 2048;
  // Logits are computed and copied to the host in chunks of this many rows.
  int64_t logits_chunk_rows = 256;
  // CUDA graphs for decode steps (every sequence one new token): the embedding and the
  // layers are captured once per (batch size rounded up to a power of two, attention
  // splits) and replayed; the padding tokens write no K/V and their outputs are ignored.
  // Only with a communicator of size 1 (the host-staged all-reduce synchronizes, and NCCL
  // capture is untested); other steps, batches above graph_max_batch and every step of an
  // h2o / streaming / infinigen cache run eagerly. Graphs are dropped (and recaptured) when a
  // larger step grows the activation buffers.
  bool cuda_graphs = false;
  int64_t graph_max_batch = 256;
  // infinigen: how the selected tokens' K/V reach the device (gpu_infinigen.h).
  InfinigenGather infinigen_gather = InfinigenGather::kZeroCopy;
  // Layers [0, kv_layers) get a device KV pool; -1 = every layer. Fewer only for infinigen,
  // whose layers >= dense_layers keep their K/V on the host (EnableInfinigen requires
  // kv_layers >= its dense_layers; any other cache is refused by Forward).
  int32_t kv_layers = -1;
};

// Device memory held by a shard, and the host<->device traffic it caused. Bytes.
struct GpuMemoryReport {
  int device = 0;
  int64_t device_total_bytes = 0;  // cudaMemGetInfo at creation
  int64_t device_free_bytes = 0;   // free at creation, before this shard allocated
  int64_t weight_bytes = 0;        // this rank's weights on the device
  int64_t kv_pool_bytes = 0;       // K and V of every layer with a device pool (kv_layers)
  int64_t num_kv_blocks = 0;       // per layer
  int64_t workspace_bytes = 0;     // activations, logits chunk, staging, cuBLASLt, attention
                                   // (+ infinigen's partial keys, weights and step buffers)
  int64_t pinned_host_bytes = 0;   // page-locked staging (inputs and logits), swap space,
                                   // strategy buffers, infinigen's host pool
  int64_t h2d_bytes = 0;           // host -> device copies so far (weights included;
                                   // infinigen: the gathered rows' K/V)
  int64_t d2h_bytes = 0;           // device -> host copies so far (logits, error words;
                                   // infinigen: K/V rows written to the host pool)
  int64_t graphs_captured = 0;     // decode graphs captured so far (cuda_graphs)
  int64_t graph_launches = 0;      // decode steps replayed from a graph
  // The plan the KV pool was sized from; absent when num_kv_blocks was given.
  std::optional<GpuMemoryPlan> plan;
  // One line for logs and the result file.
  std::string Describe() const;
};

// Unimplemented naming the strategy when `kv` is one the GPU shard cannot serve yet
// (an eviction policy without device kernels); OK otherwise.
absl::Status CheckGpuSupportsCache(kvcache::KvCache& kv);

class GpuModelShard {
 public:
  // Uploads this rank's weights, creates the stream and cuBLASLt handle and allocates the
  // KV pool and the workspace on `options.device`. `weights` is only read during Create.
  // InvalidArgument for a bad tp size / options, ResourceExhausted (naming each term) when
  // the device memory does not suffice, FailedPrecondition without a usable device.
  static absl::StatusOr<std::unique_ptr<GpuModelShard>> Create(const ModelWeights& weights,
                                                               int rank, int tp_size,
                                                               const GpuShardOptions& options);
  ~GpuModelShard();
  GpuModelShard(const GpuModelShard&) = delete;
  GpuModelShard& operator=(const GpuModelShard&) = delete;

  // KV shape this rank stores (as ModelShard::kv_shape()).
  kvcache::KvShape kv_shape() const;

  // ModelShard::Forward on the device: runs the batch through every layer, calling
  // kv.PrepareStep and using kv's NewTokenSlots()/SeqViews(l) as slot maps into this
  // shard's device pool; all-reduces through `comm` (every rank calls Forward with the same
  // batch); on rank 0 fills `out` with float32 logits (rows and row_begin as the CPU shard).
  // Returns once all of the step's device work is done. Errors: Unimplemented for the
  // caches of CheckGpuSupportsCache; ResourceExhausted when the cache uses a slot beyond the
  // device pool (raise num_kv_blocks or bound the cache; checked after PrepareStep, see
  // step_prepared()); InvalidArgument when its block size, KV heads or head_dim differ;
  // Internal for a device-side index error.
  absl::Status Forward(absl::Span<const SeqInput> batch, kvcache::KvCache& kv,
                       DeviceCommunicator& comm, ForwardOutput* out);

  // Mirrors a KvManager plan's copy-on-write block copies (StepPlan::copies) in the device
  // pool of every layer, K and V, on the shard's stream (ordered before the next Forward).
  // InvalidArgument for a block outside the pool.
  absl::Status ApplyBlockCopies(absl::Span<const kvcache::BlockCopy> copies);

  // Allocates a pinned host pool of `num_host_blocks` blocks per layer (K and V, the pool's
  // block shape and dtype) for swap preemption: the blocks of the host KvCache's HostPool
  // (ManagedKvCache). Counted in pinned_host_bytes. Call once, before any swap.
  absl::Status EnableHostPool(int64_t num_host_blocks);

  // Mirrors all of a KvManager plan's block transfers, in the plan's order: swap_out
  // (device -> host pool), swap_in (host pool -> device), then the copies. InvalidArgument
  // for a block outside the pools; FailedPrecondition for swaps without EnableHostPool.
  absl::Status ApplyBlockTransfers(const kvcache::StepPlan& plan);

  // Enables the infinigen strategy (gpu_infinigen.h) with the skewing artefacts the host
  // cache's manager holds (`skew` must outlive the shard): OPT's q/k rows are re-uploaded
  // folded, the partial weights, partial keys and the pinned host pool are allocated
  // (counted in the memory report). Forward with an InfinigenKvCache needs it
  // (FailedPrecondition otherwise). Call once, before any Forward. InvalidArgument when
  // the shard has no device pool for some layer < dense_layers (kv_layers too small).
  absl::Status EnableInfinigen(const ModelWeights& weights, const kvcache::InfinigenSkew& skew,
                               int32_t dense_layers);

  // Device memory and traffic (see GpuMemoryReport).
  const GpuMemoryReport& memory() const { return memory_; }
  int rank() const { return rank_; }
  DType dtype() const { return options_.dtype; }
  cudaStream_t stream() const { return stream_; }
  // Whether the last Forward got past kv.PrepareStep (an error after it leaves the cache
  // holding the step's tokens, so the caller's caches may be out of step).
  bool step_prepared() const { return step_prepared_; }
  // The device pool of `layer` (for tests and diagnostics); k and v are null for a layer
  // without one (>= GpuShardOptions::kv_layers).
  const kernels::cuda::CudaKvPool& device_pool(int layer) const { return pools_[layer]; }

 private:
  struct Impl;
  // Device arguments of the embedding + layers part of one step (EnqueueBody).
  struct BodyArgs {
    int64_t tokens = 0;    // rows the body runs over (padded for a graph)
    int32_t num_seqs = 0;  // entries of `views`
    int32_t max_q = 0;     // most new tokens of one sequence
    bool decode = false;   // PagedAttention (else PrefillAttention)
    const int32_t* ids = nullptr;          // [tokens]
    const int32_t* pos = nullptr;          // [tokens]
    const int32_t* pos_rows = nullptr;     // [tokens] OPT learned-position rows
    const int32_t* token_seq = nullptr;    // [tokens]
    const int32_t* seq_q_start = nullptr;  // [num_seqs + 1]
    const int32_t* slots = nullptr;        // [tokens] new-token slots (-1: no write)
    const kernels::SeqKvView* views = nullptr;  // [num_seqs], device lists
    // > 0: layer l reads views + l * views_per_layer (per-layer views); 0: one shared view.
    int64_t views_per_layer = 0;
    // Device [num_seqs][heads][max_cached] float32 the decode attention adds its mass into
    // (h2o; requires decode); null: none.
    float* attn_mass = nullptr;
    // Per-layer OnAttention work of h2o / streaming after the attention; null: none.
    GpuEvictingState* evicting = nullptr;
    // infinigen: skew, partial keys, host-pool writes, speculation and views; null: none.
    GpuInfinigen* infinigen = nullptr;
    int32_t max_cached = 0;
    void* attn_workspace = nullptr;
    size_t attn_workspace_bytes = 0;
    kernels::cuda::AttentionOptions attn_options;
  };
  GpuModelShard(const ModelWeights& weights, int rank, int tp_size,
                const GpuShardOptions& options);
  absl::Status Init(const ModelWeights& weights);
  // Enqueues the embedding and every layer on the stream; afterwards proj holds the last
  // layer's reduced MLP output (not yet added to the residual x).
  absl::Status EnqueueBody(const BodyArgs& args, DeviceCommunicator& comm);
  // Replays (capturing first if needed) the graph of EnqueueBody(args).
  absl::Status RunGraph(const BodyArgs& args, DeviceCommunicator& comm);
  // The graph bucket of a decode step of `tokens` tokens; 0 = run eagerly.
  int64_t GraphBucket(int64_t tokens) const;
  void DropGraphs();

  const ModelConfig c_;
  const int rank_;
  const int tp_;
  const GpuShardOptions options_;
  std::vector<kernels::cuda::CudaKvPool> pools_;
  GpuMemoryReport memory_;
  cudaStream_t stream_ = nullptr;
  bool step_prepared_ = false;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvscope::engine::cuda

#endif  // KVSCOPE_ENGINE_CUDA_GPU_MODEL_SHARD_H_
