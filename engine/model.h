// File: engine/model.h
//
// The forward pass of one tensor-parallel rank over a batch of sequences, for both model
// families. Prefill (many new tokens per sequence) and decode (one) share this one code path;
// sequences of different lengths are packed token by token ("ragged" batch).
//
// Megatron-style sharding for rank r of t: q/k/v and gate/up are split by output rows
// (column-parallel), o and down by input columns (row-parallel, read in place with a row
// stride, no copy), their biases added by rank 0 only; one all-reduce after attention and one
// after the MLP. Query heads are split evenly; KV heads too, or replicated when t exceeds
// them (each rank keeps the one KV head its query heads use), as vLLM does. Embeddings and
// norms are replicated; rank 0 computes the logits.
#ifndef KVSCOPE_ENGINE_MODEL_H_
#define KVSCOPE_ENGINE_MODEL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/communicator.h"
#include "engine/infinigen_forward.h"
#include "engine/weights.h"
#include "kvcache/kv_cache.h"
#include "kvcache/infinigen_kv_cache.h"
#include "kvcache/kv_manager.h"

namespace kvscope::engine {

// One sequence's share of a forward step.
struct SeqInput {
  int64_t seq_id = 0;
  absl::Span<const int32_t> tokens;  // the new tokens
  int32_t start_position = 0;        // position of tokens[0]
  bool all_logits = false;           // logits for every new token, not only the last
};

// Logits of a step: rows in batch order; sequence i owns rows [row_begin[i], row_begin[i+1]).
struct ForwardOutput {
  int64_t vocab_size = 0;
  std::vector<float> logits;     // [rows, vocab_size]
  std::vector<int64_t> row_begin;  // [num_seqs + 1]
  const float* Row(int64_t row) const { return logits.data() + row * vocab_size; }
};

// OK if `tp_size` can split the model; otherwise InvalidArgument naming the sizes that work.
absl::Status ValidateTensorParallelSize(const ModelConfig& config, int tp_size);
// Tensor-parallel sizes in [1, limit] that can split the model.
std::vector<int> WorkingTensorParallelSizes(const ModelConfig& config, int limit = 64);

// OK if every token id is in the vocabulary and every sequence fits the model's context;
// InvalidArgument / OutOfRange naming the sequence and position otherwise. The input check
// both the CPU and the GPU engine run before a step.
absl::Status ValidateSeqInputs(const ModelConfig& config, absl::Span<const SeqInput> batch);

// What one rank stores per token at tensor-parallel size `tp` (float32 on the CPU).
kvcache::KvGeometry KvGeometryFor(const ModelConfig& config, int tp);

// The slice of the model that one rank computes. Holds views into shared weights and its
// own activation workspace. Not thread-safe: one thread per shard.
class ModelShard {
 public:
  // `weights` must outlive the shard. Requires ValidateTensorParallelSize to pass.
  ModelShard(const ModelWeights& weights, int rank, int tp_size);

  // KV shape this rank stores.
  kvcache::KvShape kv_shape() const;

  // Runs the batch through every layer, writing K/V through `kv` (PrepareStep is called
  // here) and all-reducing partial sums through `comm`. On rank 0 fills `out`; other ranks
  // may pass null. Inputs must have been validated (ids in vocabulary, positions in range).
  absl::Status Forward(absl::Span<const SeqInput> batch, kvcache::KvCache& kv,
                       Communicator& comm, ForwardOutput* out);

  // Called in every layer's attention with the queries [tokens][heads][d] and keys
  // [tokens][kv_heads][d] (row strides heads·d and kv_heads·d) as they are stored: after
  // RoPE (and skewing, with infinigen). For calibration (engine/infinigen_calibration.h).
  using QkObserver =
      std::function<void(int layer, const float* q, const float* k, int64_t tokens)>;
  void set_qk_observer(QkObserver observer) { qk_observer_ = std::move(observer); }

 private:
  absl::Status Layer(int layer, kvcache::KvCache& kv, Communicator& comm);
  absl::Status Attention(int layer, kvcache::KvCache& kv);
  void ComputeLogits(absl::Span<const SeqInput> batch, ForwardOutput* out);

  const ModelWeights& w_;
  const ModelConfig& c_;
  int rank_;
  int tp_;
  int64_t heads_;          // query heads on this rank
  int64_t kv_heads_;       // KV heads on this rank
  int64_t head_begin_;     // first query head of this rank
  int64_t kv_head_begin_;  // first KV head of this rank
  int64_t inter_;          // MLP width on this rank
  int64_t rot_dim_ = 0;
  float rope_scaling_ = 1.0f;
  std::vector<float> inv_freq_;
  QkObserver qk_observer_;
  // InfiniGen (engine/infinigen_forward.h): active while the step's cache is an
  // InfinigenKvCache; rebuilt when its skewing matrices change.
  kvcache::InfinigenKvCache* ig_cache_ = nullptr;
  std::unique_ptr<InfinigenShard> ig_;
  std::vector<float> spec_q_;

  // Per-step state.
  int64_t tokens_ = 0;
  std::vector<int32_t> ids_, pos_, token_seq_;
  std::vector<float> x_, normed_, q_, k_, v_, attn_, proj_, gate_, up_;
};

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_MODEL_H_
