// File: engine/engine.h
//
// A model ready to run: weights, one ModelShard and one KvCache per tensor-parallel rank,
// and the communicator group. Forward() runs one step on every rank (rank 0 on the calling
// thread, the others on threads of their own) and returns rank 0's logits.
//
// By default every rank lives in this process and the ranks talk through a LocalCommGroup.
// A gang (engine/gang_driver.h, several processes) gives each process's engine a slice of
// the ranks (EngineOptions::first_rank, local_ranks) and their communicators
// (comm_factory, e.g. engine/tcp_comm_group.h); its Forward then runs only those ranks and
// returns logits only where rank 0 is local (an empty ForwardOutput elsewhere).
//
// Thread-safety: one caller at a time.
#ifndef KVSCOPE_ENGINE_ENGINE_H_
#define KVSCOPE_ENGINE_ENGINE_H_

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/communicator.h"
#include "engine/gang_engine.h"
#include "engine/model.h"
#include "kvcache/kv_cache.h"

namespace kvscope::engine {

struct EngineOptions {
  int tp_size = 1;
  // Worker threads for the CPU ops over all ranks (0 = every core).
  int num_threads = 0;
  // Builds the KV cache of each rank; null = kvcache::FullKvCache with these settings.
  std::function<std::unique_ptr<kvcache::KvCache>(const kvcache::KvShape&, int rank)> kv_factory;
  int32_t block_size = 16;
  int64_t max_kv_tokens = 0;  // 0 = unbounded
  // The ranks this engine runs: [first_rank, first_rank + local_ranks) of tp_size
  // (local_ranks 0 = all). num_threads is shared by these ranks only.
  int first_rank = 0;
  int local_ranks = 0;
  // The communicator of global rank `rank` (called once per local rank, in rank order);
  // null = one LocalCommGroup over the local ranks, which then must be all of them.
  std::function<absl::StatusOr<std::unique_ptr<Communicator>>(int rank)> comm_factory;
};

class Engine final : public GangEngine {
 public:
  // InvalidArgument (listing the sizes that work) when tp_size cannot split the model.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::shared_ptr<const ModelWeights> weights,
                                                        const EngineOptions& options);
  ~Engine() override;

  // One step over the batch. Validates the input first (InvalidArgument naming the sequence,
  // position and id for a token outside the vocabulary, OutOfRange for positions beyond the
  // model's context) so that a bad request never reaches the ranks. After a failure inside
  // the ranks the engine refuses further steps (FailedPrecondition): its caches may disagree.
  absl::StatusOr<ForwardOutput> Forward(absl::Span<const SeqInput> batch) override;

  // The CPU caches move their own blocks: nothing to mirror (OK).
  absl::Status ApplyPlan(const kvcache::StepPlan&) override { return absl::OkStatus(); }

  // Frees the sequence's KV on every local rank.
  void Release(int64_t seq_id) override;

  // Aborts every local rank's communicator, so that ranks of other processes blocked in a
  // collective with them fail instead of waiting (a gang member that cannot run a step).
  void AbortCollectives() override;

  const ModelConfig& config() const override { return weights_->config; }
  int tp_size() const { return options_.tp_size; }
  int first_rank() const override { return options_.first_rank; }
  int local_ranks() const override { return options_.local_ranks; }
  // The cache of global rank `rank`, which must be local.
  kvcache::KvCache& kv_cache(int rank) { return *caches_[rank - options_.first_rank]; }

 private:
  Engine(std::shared_ptr<const ModelWeights> weights, const EngineOptions& options);

  std::shared_ptr<const ModelWeights> weights_;
  EngineOptions options_;
  int threads_per_rank_ = 1;
  std::unique_ptr<LocalCommGroup> group_;
  std::vector<std::unique_ptr<Communicator>> comms_;
  std::vector<std::unique_ptr<ModelShard>> shards_;
  std::vector<std::unique_ptr<kvcache::KvCache>> caches_;
  bool failed_ = false;
};

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_ENGINE_H_
