#include "engine/cuda/gpu_engine.h"

#include <string>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/infinigen_calibration.h"
#include "kvcache/infinigen_kv_cache.h"
#include "kvcache/full_kv_cache.h"
#include "kvcache/managed_kv_cache.h"

namespace kvscope::engine::cuda {

GpuEngine::GpuEngine(std::shared_ptr<const ModelWeights> weights, const GpuEngineOptions& options)
    : weights_(std::move(weights)), options_(options) {}

GpuEngine::~GpuEngine() = default;

absl::StatusOr<std::unique_ptr<GpuEngine>> GpuEngine::Create(
    std::shared_ptr<const ModelWeights> weights, const GpuEngineOptions& options) {
  const int tp = options.tp_size;
  KVSCOPE_RETURN_IF_ERROR(ValidateTensorParallelSize(weights->config, tp));
  GpuEngineOptions resolved = options;
  if (resolved.local_ranks == 0) resolved.local_ranks = tp - resolved.first_rank;
  const int first = resolved.first_rank;
  const int local = resolved.local_ranks;
  if (first < 0 || local < 1 || first + local > tp) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GPU engine ranks [", first, ", ", first + local,
        ") are not inside the tensor-parallel group of ", tp));
  }
  if (local != tp && options.comm == GpuCommKind::kHostStaged && !options.comm_factory) {
    return absl::InvalidArgumentError(
        "a GPU engine running only some of the ranks host-staged needs a comm_factory for them");
  }
  if (local != tp && options.comm == GpuCommKind::kNccl && options.nccl_unique_id.empty()) {
    return absl::InvalidArgumentError(
        "a GPU engine running only some of the ranks over NCCL needs the group's "
        "nccl_unique_id");
  }
  if (!options.devices.empty() && static_cast<int>(options.devices.size()) != local) {
    return absl::InvalidArgumentError(absl::StrCat("GPU engine: ", options.devices.size(),
                                                   " devices listed for ", local, " ranks"));
  }
  std::unique_ptr<GpuEngine> engine(new GpuEngine(std::move(weights), resolved));
  // `i` indexes the local ranks; global rank first + i.
  auto device_of = [&options](int i) {
    return options.devices.empty() ? options.shard.device : options.devices[i];
  };
  const kvcache::KvShape shape = KvGeometryFor(engine->weights_->config, tp).RankShape();
  for (int i = 0; i < local; ++i) {
    const int r = first + i;
    if (options.kv_factory) {
      engine->caches_.push_back(options.kv_factory(shape, r));
    } else {
      // Bookkeeping only: the K/V live in the shard's device pool.
      engine->caches_.push_back(std::make_unique<kvcache::FullKvCache>(
          shape, kvcache::FullKvCache::Options{options.shard.block_size, options.max_kv_tokens,
                                               /*allocate_storage=*/false}));
    }
    kvcache::KvCache& cache = *engine->caches_.back();
    KVSCOPE_RETURN_IF_ERROR(CheckGpuSupportsCache(cache));
    GpuShardOptions shard_options = options.shard;
    shard_options.device = device_of(i);
    // A cache with a fixed pool (a KvManager's budget) gives the device pool its blocks.
    const kernels::KvPoolView pool = cache.Pool(0);
    if (pool.num_blocks > 0 && options.shard.num_kv_blocks == 0) {
      shard_options.block_size = pool.block_size;
      shard_options.num_kv_blocks = pool.num_blocks;
    }
    // infinigen: the skewing matrices are calibrated on the host model (as the CPU engine
    // does, so both engines get the same ones); only the dense layers get a device pool, of
    // the host slots (at most the manager's capacity); the offloaded layers' K/V stay in the
    // shard's pinned host pool of the same size (gpu_infinigen.h).
    auto* infinigen = dynamic_cast<kvcache::InfinigenKvCache*>(&cache);
    if (infinigen != nullptr) {
      KVSCOPE_RETURN_IF_ERROR(PrepareInfinigen(*engine->weights_, cache));
      shard_options.kv_layers = infinigen->manager().dense_layers();
      if (options.shard.num_kv_blocks == 0) {
        const int64_t block = kvcache::InfinigenKvManager::kBlockSize;
        shard_options.block_size = static_cast<int32_t>(block);
        shard_options.num_kv_blocks =
            (infinigen->manager().CapacityTokens() + block - 1) / block + 1;
      }
    }
    absl::StatusOr<std::unique_ptr<GpuModelShard>> created =
        GpuModelShard::Create(*engine->weights_, r, tp, shard_options);
    if (!created.ok() && infinigen != nullptr && options.shard.num_kv_blocks == 0 &&
        absl::IsResourceExhausted(created.status())) {
      return absl::ResourceExhaustedError(absl::StrCat(
          created.status().message(), "; infinigen's dense layers (",
          infinigen->manager().dense_layers(), ") get a device pool for the manager's capacity (",
          infinigen->manager().CapacityTokens(), " tokens); lower memory.kv_bytes"));
    }
    if (!created.ok()) return created.status();
    std::unique_ptr<GpuModelShard> shard = std::move(*created);
    if (infinigen != nullptr) {
      const absl::Status enabled = shard->EnableInfinigen(
          *engine->weights_, *infinigen->skew(), infinigen->manager().dense_layers());
      if (absl::IsResourceExhausted(enabled)) {
        return absl::ResourceExhaustedError(absl::StrCat(
            enabled.message(), "; infinigen allocates, for the manager's whole capacity (",
            infinigen->manager().CapacityTokens(),
            " tokens), a pinned host pool with the K/V of layers >= dense_layers (",
            infinigen->manager().dense_layers(),
            ") and their partial keys on the device; lower memory.kv_bytes"));
      }
      KVSCOPE_RETURN_IF_ERROR(enabled);
    }
    // Swap space mirroring the cache's host pool (paged with preemption_mode=swap).
    if (auto* managed = dynamic_cast<kvcache::ManagedKvCache*>(&cache); managed != nullptr) {
      const int64_t host_blocks = managed->HostPool(0).num_blocks;
      if (host_blocks > 0) KVSCOPE_RETURN_IF_ERROR(shard->EnableHostPool(host_blocks));
    }
    engine->shards_.push_back(std::move(shard));
  }
  if (options.comm == GpuCommKind::kHostStaged) {
    if (options.comm_factory) {
      for (int i = 0; i < local; ++i) {
        KVSCOPE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> host,
                                 options.comm_factory(first + i));
        engine->comms_.push_back(CreateHostStagedCommunicator(std::move(host)));
      }
    } else {
      engine->group_ = std::make_unique<LocalCommGroup>(tp);
      for (int r = 0; r < tp; ++r) {
        engine->comms_.push_back(CreateHostStagedCommunicator(engine->group_->ForRank(r)));
      }
    }
  } else {
    std::string id = options.nccl_unique_id;
    if (id.empty()) {
      KVSCOPE_ASSIGN_OR_RETURN(id, NewNcclUniqueId());
    }
    // Every local rank joins concurrently (ncclCommInitRank blocks until all `tp` joined,
    // those of other processes included).
    std::vector<absl::StatusOr<std::unique_ptr<DeviceCommunicator>>> made;
    for (int i = 0; i < local; ++i) made.emplace_back(absl::UnknownError("not created"));
    std::vector<std::thread> threads;
    for (int i = 0; i < local; ++i) {
      threads.emplace_back(
          [&, i] { made[i] = CreateNcclCommunicator(id, first + i, tp, device_of(i)); });
    }
    for (std::thread& t : threads) t.join();
    for (int i = 0; i < local; ++i) {
      if (!made[i].ok()) return made[i].status();
      engine->comms_.push_back(std::move(*made[i]));
    }
  }
  return engine;
}

absl::StatusOr<ForwardOutput> GpuEngine::Forward(absl::Span<const SeqInput> batch) {
  if (failed_) {
    return absl::FailedPreconditionError(
        "GPU engine stopped after an earlier failure inside the forward pass; create a new one");
  }
  KVSCOPE_RETURN_IF_ERROR(ValidateSeqInputs(config(), batch));
  ForwardOutput out;
  // `r` indexes the local ranks; global rank first_rank + r.
  const int local = options_.local_ranks;
  std::vector<absl::Status> status(local);
  auto run_rank = [&](int r) {
    const bool rank0 = options_.first_rank + r == 0;
    status[r] = shards_[r]->Forward(batch, *caches_[r], *comms_[r], rank0 ? &out : nullptr);
    if (!status[r].ok()) comms_[r]->Abort();  // release the ranks waiting in a collective
  };
  std::vector<std::thread> threads;
  for (int r = 1; r < local; ++r) threads.emplace_back(run_rank, r);
  run_rank(0);
  for (std::thread& t : threads) t.join();
  absl::Status first;
  bool aborted = false;
  bool prepared = false;
  for (int r = 0; r < local; ++r) {
    prepared = prepared || shards_[r]->step_prepared();
    if (absl::IsAborted(status[r])) {
      aborted = true;
    } else if (!status[r].ok() && first.ok()) {
      first = status[r];
    }
  }
  if (first.ok() && aborted) first = status[0];
  if (!first.ok()) {
    // Only a full cache refused by PrepareStep on every rank leaves the caches in step.
    failed_ = aborted || prepared || !absl::IsResourceExhausted(first);
    return first;
  }
  return out;
}

absl::Status GpuEngine::ApplyPlan(const kvcache::StepPlan& plan) {
  for (auto& shard : shards_) {
    absl::Status st = shard->ApplyBlockTransfers(plan);
    if (!st.ok()) {
      failed_ = true;
      return st;
    }
  }
  return absl::OkStatus();
}

nlohmann::json GpuEngine::MemoryJson() const {
  nlohmann::json ranks = nlohmann::json::array();
  for (const auto& shard : shards_) {
    const GpuMemoryReport& m = shard->memory();
    nlohmann::json r = {{"rank", shard->rank()},
                        {"device", m.device},
                        {"dtype", std::string(DTypeName(shard->dtype()))},
                        {"device_total_bytes", m.device_total_bytes},
                        {"device_free_bytes", m.device_free_bytes},
                        {"weight_bytes", m.weight_bytes},
                        {"kv_pool_bytes", m.kv_pool_bytes},
                        {"num_kv_blocks", m.num_kv_blocks},
                        {"workspace_bytes", m.workspace_bytes},
                        {"pinned_host_bytes", m.pinned_host_bytes},
                        {"h2d_bytes", m.h2d_bytes},
                        {"d2h_bytes", m.d2h_bytes},
                        {"graphs_captured", m.graphs_captured},
                        {"graph_launches", m.graph_launches},
                        {"describe", m.Describe()}};
    if (m.plan.has_value()) {
      r["plan"] = {{"limit_bytes", m.plan->limit_bytes},
                   {"kv_bytes", m.plan->kv_bytes},
                   {"headroom_bytes", m.plan->headroom_bytes}};
    }
    ranks.push_back(std::move(r));
  }
  return {{"communicator", comms_.empty() ? "" : std::string(comms_[0]->kind())},
          {"ranks", std::move(ranks)}};
}

void GpuEngine::Release(int64_t seq_id) {
  for (auto& cache : caches_) cache->Release(seq_id);
}

void GpuEngine::AbortCollectives() {
  for (auto& comm : comms_) comm->Abort();
}

std::vector<GpuMemoryReport> GpuEngine::MemoryReports() const {
  std::vector<GpuMemoryReport> reports;
  for (const auto& shard : shards_) reports.push_back(shard->memory());
  return reports;
}

QualityEngineFactory GpuQualityEngineFactory(GpuEngineOptions base, int64_t full_cache_tokens) {
  return [base, full_cache_tokens](std::shared_ptr<const ModelWeights> weights,
                                   kvcache::KvManager* manager,
                                   int tp_size) -> absl::StatusOr<std::unique_ptr<GangEngine>> {
    GpuEngineOptions g = base;
    g.tp_size = tp_size;
    if (manager != nullptr) {
      g.kv_factory = [manager](const kvcache::KvShape&, int rank) {
        return manager->CreateRankCache(rank);
      };
    } else {
      g.kv_factory = nullptr;  // FullKvCache
      g.max_kv_tokens = full_cache_tokens;
      const int64_t block = g.shard.block_size;
      g.shard.num_kv_blocks = (full_cache_tokens + block - 1) / block + 1;
    }
    KVSCOPE_ASSIGN_OR_RETURN(std::unique_ptr<GpuEngine> engine,
                             GpuEngine::Create(std::move(weights), g));
    return std::unique_ptr<GangEngine>(std::move(engine));
  };
}

}  // namespace kvscope::engine::cuda
