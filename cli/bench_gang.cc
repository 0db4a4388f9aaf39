#include "cli/bench_gang.h"

#include <cstdio>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/engine.h"
#include "engine/gang_data_plane.h"
#include "engine/gang_follower.h"
#include "kvcache/registry.h"
#include "nlohmann/json.hpp"

namespace kvscope::cli {

absl::Status CheckGangFlags(const GangFlags& gang, const engine::BenchConfig& c) {
  if (!gang.enabled) {
    if (c.nodes > 1) {
      return absl::FailedPreconditionError(absl::StrCat(
          "nodes: ", c.nodes, " spans ", c.nodes,
          " worker processes; submit it to a coordinator (kvscope submit) whose workers run "
          "the gang, or start every process by hand with --gang-rank R --gang-size ", c.nodes,
          " --gang-rendezvous-file F (docs/bench.md, Gangs)"));
    }
    return absl::OkStatus();
  }
  if (!gang.all_given || gang.rendezvous_file.empty()) {
    return absl::InvalidArgumentError(
        "--gang-rank, --gang-size and --gang-rendezvous-file go together; give all three");
  }
  if (gang.size != c.nodes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--gang-size ", gang.size, " does not match the configuration's nodes: ", c.nodes,
        " (the gang has one process per node)"));
  }
  if (gang.rank < 0 || gang.rank >= gang.size) {
    return absl::InvalidArgumentError(absl::StrCat("--gang-rank must be in [0, ", gang.size,
                                                   "), got ", gang.rank));
  }
  if (!(gang.timeout_s > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--gang-timeout must be > 0 seconds, got ", gang.timeout_s));
  }
  return absl::OkStatus();
}

engine::GangLayout LayoutOf(const GangFlags& gang, const engine::BenchConfig& c) {
  return {static_cast<int>(gang.rank), c.nodes, c.tp};
}

std::string GangFingerprint(const engine::BenchConfig& c,
                            const kvcache::KvManagerContext& context) {
  nlohmann::json j = engine::BenchConfigToJson(c);
  j.erase("out_dir");
  uint64_t hash = 1469598103934665603ull;  // FNV-1a over the calibration ids
  size_t count = 0;
  if (context.calibration_ids != nullptr) {
    count = context.calibration_ids->size();
    for (int32_t id : *context.calibration_ids) {
      hash = (hash ^ static_cast<uint32_t>(id)) * 1099511628211ull;
    }
  }
  j["calibration_ids"] = {{"count", count}, {"fnv1a", hash}};
  return j.dump();
}

#if KVSCOPE_WITH_CUDA
absl::StatusOr<engine::cuda::GpuEngineOptions> GpuEngineOptionsFor(
    const engine::BenchConfig& c, kvcache::KvManager* manager) {
  engine::cuda::GpuEngineOptions g;
  g.tp_size = c.tp;
  KVSCOPE_ASSIGN_OR_RETURN(
      g.shard.dtype,
      ParseDType(c.gpu_dtype == "f32" ? "F32" : c.gpu_dtype == "fp16" ? "F16" : "BF16"));
  g.shard.cuda_graphs = c.cuda_graphs;
  g.kv_factory = [manager](const kvcache::KvShape&, int rank) {
    return manager->CreateRankCache(rank);
  };
  return g;
}

absl::StatusOr<std::unique_ptr<engine::cuda::GpuEngine>> CreateGpuGangEngine(
    const engine::BenchConfig& c, const engine::GangLayout& layout,
    engine::GangMembership* membership, std::shared_ptr<const engine::ModelWeights> weights,
    kvcache::KvManager* manager, double timeout_s) {
  KVSCOPE_ASSIGN_OR_RETURN(engine::cuda::GpuEngineOptions g, GpuEngineOptionsFor(c, manager));
  const int k = layout.ranks_per_process();
  g.first_rank = layout.first_rank();
  g.local_ranks = k;
  KVSCOPE_ASSIGN_OR_RETURN(const int visible, engine::cuda::VisibleGpuCount());
  if (visible < 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "gang process ", layout.process, ": backend: cuda, but no CUDA device is visible "
        "(CUDA_VISIBLE_DEVICES)"));
  }
  std::vector<std::string> gpus;
  for (int i = 0; i < k; ++i) {
    g.devices.push_back(i % visible);
    KVSCOPE_ASSIGN_OR_RETURN(std::string id, engine::cuda::GpuIdentity(g.devices.back()));
    gpus.push_back(std::move(id));
  }
  engine::GangDataPlaneChoice plane;
  if (layout.process == 0) {
    KVSCOPE_ASSIGN_OR_RETURN(plane, engine::NegotiateGangDataPlane(
                                        membership->followers, gpus, k,
                                        [] { return engine::cuda::NewNcclUniqueId(); },
                                        timeout_s));
  } else {
    KVSCOPE_ASSIGN_OR_RETURN(plane,
                             engine::JoinGangDataPlane(*membership->driver, gpus, timeout_s));
  }
  if (plane.plane == engine::GangDataPlane::kNccl) {
    g.comm = engine::cuda::GpuCommKind::kNccl;
    g.nccl_unique_id = plane.nccl_unique_id;
    // The TCP communicators stay unused (NCCL carries the collectives); they close with
    // the membership.
  } else {
    g.comm = engine::cuda::GpuCommKind::kHostStaged;
    std::vector<std::unique_ptr<engine::Communicator>>* comms = &membership->comms;
    const int first = layout.first_rank();
    g.comm_factory = [comms, first](int rank)
        -> absl::StatusOr<std::unique_ptr<engine::Communicator>> {
      return std::move((*comms)[rank - first]);
    };
  }
  std::printf("kvscope bench: gang process %d, GPU ranks %d-%d, data plane %s\n",
              layout.process, layout.first_rank(), layout.first_rank() + k - 1,
              std::string(engine::GangDataPlaneName(plane.plane)).c_str());
  std::fflush(stdout);
  return engine::cuda::GpuEngine::Create(std::move(weights), g);
}
#endif

absl::StatusOr<int> RunGangFollowerProcess(const GangFlags& gang, const engine::BenchConfig& c,
                                           std::shared_ptr<const engine::ModelWeights> weights,
                                           const kvcache::KvManagerContext& context) {
  const engine::GangLayout layout = LayoutOf(gang, c);
  std::string blob;
  {
    std::ifstream in(gang.rendezvous_file);
    std::stringstream text;
    if (!in || !(text << in.rdbuf())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "gang follower: cannot read --gang-rendezvous-file ", gang.rendezvous_file,
          " (rank 0 writes it; a worker daemon writes the blob it got from the coordinator)"));
    }
    blob = text.str();
  }
  // The replica of the driver's KV manager (engine/recording_kv_manager.h).
  KVSCOPE_ASSIGN_OR_RETURN(std::unique_ptr<kvcache::KvManager> replica,
                           kvcache::CreateKvManager(c.strategy, c.strategy_params, context));
  engine::TcpCommOptions comm_options;
  KVSCOPE_ASSIGN_OR_RETURN(
      engine::GangMembership membership,
      engine::JoinGang(layout, blob, GangFingerprint(c, context),
                       engine::DeadlineIn(gang.timeout_s), comm_options));
  kvcache::KvManager* manager = replica.get();
  std::unique_ptr<engine::GangEngine> eng;
  if (c.backend == "cuda") {
#if KVSCOPE_WITH_CUDA
    KVSCOPE_ASSIGN_OR_RETURN(eng, CreateGpuGangEngine(c, layout, &membership, std::move(weights),
                                                      manager, gang.timeout_s));
#else
    return absl::FailedPreconditionError(
        "backend: cuda, but this kvscope was built without CUDA (configure with "
        "-DKVSCOPE_CUDA=ON)");
#endif
  } else {
    engine::EngineOptions options;
    options.tp_size = c.tp;
    options.num_threads = c.threads;
    options.first_rank = layout.first_rank();
    options.local_ranks = layout.ranks_per_process();
    options.kv_factory = [manager](const kvcache::KvShape&, int rank) {
      return manager->CreateRankCache(rank);
    };
    std::vector<std::unique_ptr<engine::Communicator>>* comms = &membership.comms;
    options.comm_factory = [comms, &layout](int rank)
        -> absl::StatusOr<std::unique_ptr<engine::Communicator>> {
      return std::move((*comms)[rank - layout.first_rank()]);
    };
    KVSCOPE_ASSIGN_OR_RETURN(eng, engine::Engine::Create(std::move(weights), options));
  }
  const int last = layout.first_rank() + layout.ranks_per_process() - 1;
  std::printf("kvscope bench: gang follower %d of %d, ranks %d-%d of tp=%d, joined\n",
              layout.process, layout.nodes, layout.first_rank(), last, c.tp);
  std::fflush(stdout);
  engine::GangFollowerStats stats;
  KVSCOPE_RETURN_IF_ERROR(engine::RunGangFollower(*membership.driver, *replica, *eng, &stats));
  std::printf("kvscope bench: gang follower %d done after %lld steps (the driver writes the "
              "results)\n",
              layout.process, static_cast<long long>(stats.steps));
  return 0;
}

}  // namespace kvscope::cli
